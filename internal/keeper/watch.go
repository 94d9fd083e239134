package keeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

type watchOptions struct {
	root *rootOptions
}

func newWatchCmd(root *rootOptions) *cobra.Command {
	opts := &watchOptions{root: root}
	return &cobra.Command{
		Use:   "watch",
		Short: "Watch hives and workers live (plain lines when stdout is not a terminal)",
		Long: "watch follows the queen's event stream (GET /v1/events). On a terminal it\n" +
			"redraws a table of hives and workers with slots and tokens/s; otherwise it\n" +
			"prints one line per event. Ctrl-C ends it.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runWatch(cmd.Context(), opts)
		},
	}
}

// fleetView is what watch knows of the fleet, updated by each event.
type fleetView struct {
	hives   map[string]api.Hive
	workers map[string]*api.WorkerSummary
	hiveOf  map[string]string // worker id to hive
	last    string            // the latest event, as a line
}

func runWatch(ctx context.Context, opts *watchOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	view := &fleetView{hives: map[string]api.Hive{}, workers: map[string]*api.WorkerSummary{},
		hiveOf: map[string]string{}}
	var hives api.HiveList
	if err := c.do(ctx, http.MethodGet, "/v1/hives", nil, &hives); err != nil {
		return err
	}
	for _, h := range hives.Hives {
		view.hives[h.Name] = h
	}
	var workers api.WorkerList
	if err := c.do(ctx, http.MethodGet, "/v1/workers", nil, &workers); err != nil {
		return err
	}
	for _, w := range workers.Workers {
		view.workers[w.ID] = &api.WorkerSummary{ID: w.ID, Model: w.Model, State: w.State,
			SlotsBusy: w.SlotsBusy, SlotsTotal: w.Slots}
		view.hiveOf[w.ID] = w.Hive
	}

	conn, err := dialEvents(ctx, c)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	out := opts.root.Stdout
	for {
		var ev api.Event
		if err := conn.ReadJSON(&ev); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return fmt.Errorf("the queen closed the event stream: %s", ce.Text)
			}
			return fmt.Errorf("reading the queen's events: %w", err)
		}
		view.apply(ev)
		if opts.root.StdoutTTY {
			view.draw(out, opts.root.Now())
		} else if line := eventLine(ev); line != "" {
			fmt.Fprintln(out, line)
		}
	}
}

// dialEvents opens the queen's event stream with the API key.
func dialEvents(ctx context.Context, c *client) (*websocket.Conn, error) {
	url := "ws" + strings.TrimPrefix(c.base, "http") + "/v1/events"
	header := http.Header{}
	if c.apiKey != "" {
		header.Set("Authorization", "Bearer "+c.apiKey)
	}
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Proxy: http.ProxyFromEnvironment}
	conn, resp, err := dialer.DialContext(ctx, url, header)
	if err != nil {
		if resp != nil {
			defer resp.Body.Close()
			return nil, c.errorAnswer(http.MethodGet, "/v1/events", resp)
		}
		return nil, c.transportError(err)
	}
	return conn, nil
}

// apply updates the view with one event.
func (v *fleetView) apply(ev api.Event) {
	switch ev.Type {
	case api.EventSummary:
		for _, w := range ev.Workers {
			w := w
			v.workers[w.ID] = &w
		}
		return
	case api.EventHive:
		h := v.hives[ev.Hive]
		h.Name = ev.Hive
		h.Reachable = ev.Reachable != nil && *ev.Reachable
		h.LastError = ev.Reason
		v.hives[ev.Hive] = h
	case api.EventWorker:
		w, ok := v.workers[ev.WorkerID]
		if !ok {
			w = &api.WorkerSummary{ID: ev.WorkerID, Model: ev.Model}
			v.workers[ev.WorkerID] = w
		}
		w.State = ev.State
		v.hiveOf[ev.WorkerID] = ev.Hive
		if ev.State == api.WorkerStopped {
			delete(v.workers, ev.WorkerID)
		}
	}
	v.last = eventLine(ev)
}

// eventLine is one event as a plain line; summaries list each worker.
func eventLine(ev api.Event) string {
	at := ev.Time.Local().Format("15:04:05")
	switch ev.Type {
	case api.EventWorker:
		return strings.TrimSpace(fmt.Sprintf("%s worker %s %s hive=%s model=%s %s", at,
			ev.WorkerID, ev.State, ev.Hive, ev.Model, ev.Reason))
	case api.EventHive:
		state := "unreachable"
		if ev.Reachable != nil && *ev.Reachable {
			state = "reachable"
		}
		return strings.TrimSpace(fmt.Sprintf("%s hive %s %s %s", at, ev.Hive, state, ev.Reason))
	case api.EventSummary:
		parts := make([]string, 0, len(ev.Workers))
		for _, w := range ev.Workers {
			parts = append(parts, fmt.Sprintf("%s %s %d/%d %.1ftok/s", w.ID, w.State,
				w.SlotsBusy, w.SlotsTotal, w.GenTokensPerSec))
		}
		if len(parts) == 0 {
			return at + " summary no workers"
		}
		return at + " summary " + strings.Join(parts, ", ")
	}
	return ""
}

// draw clears the terminal and prints the fleet as two tables.
func (v *fleetView) draw(w io.Writer, now time.Time) {
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J")
	fmt.Fprintf(&b, "rbee watch  %s  (Ctrl-C to quit)\n\n", now.Format("15:04:05"))
	fmt.Fprintf(&b, "%-16s %-12s %s\n", "HIVE", "STATE", "LAST ERROR")
	for _, name := range sortedKeys(v.hives) {
		h := v.hives[name]
		state := "unreachable"
		if h.Reachable || h.Local {
			state = "reachable"
		}
		fmt.Fprintf(&b, "%-16s %-12s %s\n", name, state, h.LastError)
	}
	fmt.Fprintf(&b, "\n%-10s %-12s %-20s %-9s %-7s %s\n", "WORKER", "HIVE", "MODEL", "STATE",
		"SLOTS", "TOK/S")
	for _, id := range sortedKeys(v.workers) {
		wk := v.workers[id]
		fmt.Fprintf(&b, "%-10s %-12s %-20s %-9s %-7s %.1f\n", id, v.hiveOf[id], wk.Model,
			wk.State, fmt.Sprintf("%d/%d", wk.SlotsBusy, wk.SlotsTotal), wk.GenTokensPerSec)
	}
	if v.last != "" {
		b.WriteString("\nlast event: " + v.last + "\n")
	}
	_, _ = io.WriteString(w, b.String())
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
