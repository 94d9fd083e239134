package queen

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/rbee-dev/rbee/internal/api"
)

// Event stream limits.
const (
	// defaultEventBuffer is how many events a subscriber may fall behind
	// before it is dropped (--event-buffer): the queen never waits for a
	// slow consumer.
	defaultEventBuffer = 256
	// defaultSummaryInterval is how often the summary event goes out.
	defaultSummaryInterval = 2 * time.Second
	// eventWriteWait bounds one write to a subscriber.
	eventWriteWait = 10 * time.Second
	// defaultPingInterval and the pong wait keep idle connections honest:
	// a peer that answers no ping within pongWait is closed.
	defaultPingInterval = 20 * time.Second
)

// slowConsumerPrefix starts the close reason a dropped subscriber receives.
const slowConsumerPrefix = "slow consumer"

// slowConsumerReason is the close reason for a subscriber with a buffer of
// size events.
func slowConsumerReason(size int) string {
	return slowConsumerPrefix + ": fell " + strconv.Itoa(size) +
		" events behind; reconnect and read faster"
}

// Event stream subprotocols. A browser cannot set the Authorization header
// on a WebSocket, so it offers its key as the subprotocol keyProtocolPrefix
// + KEY next to eventsProtocol; the queen answers eventsProtocol only, so
// the key never comes back.
const (
	eventsProtocol    = "rbee.v1"
	keyProtocolPrefix = "rbee.key."
)

// eventHub fans events out to subscribers. Publish never blocks: a
// subscriber whose buffer is full is dropped.
type eventHub struct {
	log    *slog.Logger
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool
}

// subscriber is one consumer: its events, and gone, closed (with why set)
// when the hub lets go of it.
type subscriber struct {
	events chan api.Event
	gone   chan struct{}
	why    string
}

func newEventHub(log *slog.Logger) *eventHub {
	return &eventHub{log: log, subs: map[*subscriber]struct{}{}}
}

// subscribe adds a consumer with a buffer of size events.
func (h *eventHub) subscribe(size int) *subscriber {
	sub := &subscriber{events: make(chan api.Event, size), gone: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		sub.why = "the queen is shutting down"
		close(sub.gone)
		return sub
	}
	h.subs[sub] = struct{}{}
	return sub
}

// unsubscribe removes sub, once it stops reading of its own accord.
func (h *eventHub) unsubscribe(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(sub, "")
}

// dropLocked lets go of sub, saying why; callers hold mu.
func (h *eventHub) dropLocked(sub *subscriber, why string) {
	if _, ok := h.subs[sub]; !ok {
		return
	}
	delete(h.subs, sub)
	sub.why = why
	close(sub.gone)
}

// count is how many subscribers listen.
func (h *eventHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// publish sends ev to every subscriber that has room, and drops the rest.
func (h *eventHub) publish(ev api.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		select {
		case sub.events <- ev:
		default:
			h.log.Warn("event subscriber dropped", "reason", slowConsumerPrefix,
				"buffer", cap(sub.events))
			h.dropLocked(sub, slowConsumerReason(cap(sub.events)))
		}
	}
}

// close lets go of every subscriber, as the queen stops.
func (h *eventHub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for sub := range h.subs {
		h.dropLocked(sub, "the queen is shutting down")
	}
}

// workerEvent publishes a worker's change of state.
func (s *Server) workerEvent(id, hive, model string, state api.WorkerState, reason string) {
	s.events.publish(api.Event{Type: api.EventWorker, WorkerID: id, Hive: hive, Model: model,
		State: state, Reason: reason})
}

// hiveEvent publishes what contacting a hive found.
func (s *Server) hiveEvent(hive string, reachable bool, reason string) {
	s.events.publish(api.Event{Type: api.EventHive, Hive: hive, Reachable: &reachable,
		Reason: reason})
}

// summary is every routable worker's live figures.
func (s *Server) summary() api.Event {
	routes, _ := s.router.snapshot()
	ev := api.Event{Type: api.EventSummary, Workers: make([]api.WorkerSummary, 0, len(routes))}
	for _, rt := range routes {
		ws := api.WorkerSummary{ID: rt.id, Model: rt.model, State: rt.state,
			SlotsBusy: rt.busy, SlotsTotal: rt.slotsTotal}
		if st, _, ok := s.live.latest(rt.id); ok {
			ws.GenTokensPerSec, ws.PromptTokensPerSec = st.GenTokensPerSec, st.PromptTokensPerSec
		}
		ev.Workers = append(ev.Workers, ws)
	}
	return ev
}

// summaryInterval is how often the summary event goes out.
func (s *Server) summaryInterval() time.Duration {
	if s.cfg.SummaryInterval > 0 {
		return s.cfg.SummaryInterval
	}
	return defaultSummaryInterval
}

// runSummaries publishes a summary every interval while anyone listens,
// until ctx ends.
func (s *Server) runSummaries(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s.events.count() > 0 {
				s.events.publish(s.summary())
			}
		}
	}
}

// upgrader answers the eventsProtocol subprotocol when the client offers
// it, and never a key protocol.
var upgrader = websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 16 << 10,
	Subprotocols: []string{eventsProtocol}}

// subprotocolKey returns the API key a client offered as a subprotocol.
func subprotocolKey(r *http.Request) (string, bool) {
	for _, p := range websocket.Subprotocols(r) {
		if key, ok := strings.CutPrefix(p, keyProtocolPrefix); ok && key != "" {
			return key, true
		}
	}
	return "", false
}

// handleEvents upgrades to a WebSocket and streams events as JSON text
// messages: a summary at once, then every event as it happens. The client
// sends nothing but pongs (and a close).
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) error {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return nil // the upgrader already answered with the error
	}
	size := s.cfg.EventBuffer
	if size <= 0 {
		size = defaultEventBuffer
	}
	sub := s.events.subscribe(size)
	s.log.Debug("event subscriber joined", "remote", r.RemoteAddr)
	ping := s.pingInterval
	if ping <= 0 {
		ping = defaultPingInterval
	}
	pongWait := 2 * ping

	// The reader handles pongs and the peer's close; it ends the writer
	// when the connection goes.
	readerDone := make(chan struct{})
	_ = conn.SetReadDeadline(time.Now().Add(pongWait))
	conn.SetPongHandler(func(string) error {
		return conn.SetReadDeadline(time.Now().Add(pongWait))
	})
	conn.SetReadLimit(4 << 10)
	go func() {
		defer close(readerDone)
		for {
			if _, _, err := conn.NextReader(); err != nil {
				return
			}
		}
	}()

	defer func() {
		s.events.unsubscribe(sub)
		_ = conn.Close()
		<-readerDone
		s.log.Debug("event subscriber left", "remote", r.RemoteAddr, "reason", sub.why)
	}()
	write := func(ev api.Event) error {
		data, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		_ = conn.SetWriteDeadline(time.Now().Add(eventWriteWait))
		return conn.WriteMessage(websocket.TextMessage, data)
	}
	if err := write(s.summary()); err != nil {
		return nil
	}
	ticker := time.NewTicker(ping)
	defer ticker.Stop()
	for {
		select {
		case <-sub.gone: // first, so that a dropped consumer hears why at once
		default:
			select {
			case <-sub.gone:
			case <-readerDone:
				return nil
			case ev := <-sub.events:
				if err := write(ev); err != nil {
					return nil
				}
				continue
			case <-ticker.C:
				_ = conn.SetWriteDeadline(time.Now().Add(eventWriteWait))
				if err := conn.WriteMessage(websocket.PingMessage, nil); err != nil {
					return nil
				}
				continue
			}
		}
		code := websocket.ClosePolicyViolation
		if !strings.HasPrefix(sub.why, slowConsumerPrefix) {
			code = websocket.CloseGoingAway
		}
		_ = conn.SetWriteDeadline(time.Now().Add(eventWriteWait))
		_ = conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(code, sub.why))
		return nil
	}
}
