package keeper

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"gotest.tools/v3/assert"
	"gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

// eventsQueen plays a queen whose event stream sends events, then closes
// as a queen that shuts down does. It records the Authorization it saw.
func eventsQueen(t *testing.T, auth *recorder[string], events ...api.Event) string {
	t.Helper()
	srv := fakeQueen(t, map[string]http.HandlerFunc{
		"GET /v1/hives": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.HiveList{Hives: []api.Hive{{Name: "localhost", Local: true}}})
		},
		"GET /v1/workers": func(w http.ResponseWriter, _ *http.Request) {
			reply(w, http.StatusOK, api.WorkerList{})
		},
		"GET /v1/events": func(w http.ResponseWriter, r *http.Request) {
			auth.add(r.Header.Get("Authorization"))
			conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
			assert.Check(t, err)
			defer conn.Close()
			for _, ev := range events {
				assert.Check(t, conn.WriteJSON(ev))
			}
			_ = conn.WriteMessage(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseGoingAway, "the queen is shutting down"))
		},
	})
	return srv.URL
}

func TestWatchPlainLines(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local)
	yes, no := true, false
	tests := []struct {
		name   string
		events []api.Event
		want   []string
	}{
		{
			name: "a worker's life",
			events: []api.Event{
				{Type: api.EventWorker, Time: at, WorkerID: "w-1", Hive: "localhost",
					Model: "tiny", State: api.WorkerStarting, Reason: "spawn requested"},
				{Type: api.EventSummary, Time: at, Workers: []api.WorkerSummary{{ID: "w-1",
					State: api.WorkerReady, SlotsBusy: 1, SlotsTotal: 2, GenTokensPerSec: 41.5}}},
				{Type: api.EventWorker, Time: at, WorkerID: "w-1", Hive: "localhost",
					Model: "tiny", State: api.WorkerLost, Reason: "no heartbeat before the deadline"},
			},
			want: []string{
				"03:04:05 worker w-1 starting hive=localhost model=tiny spawn requested",
				"03:04:05 summary w-1 ready 1/2 41.5tok/s",
				"03:04:05 worker w-1 lost hive=localhost model=tiny no heartbeat before the deadline",
			},
		},
		{
			name: "hives",
			events: []api.Event{
				{Type: api.EventHive, Time: at, Hive: "gpu1", Reachable: &yes},
				{Type: api.EventHive, Time: at, Hive: "gpu2", Reachable: &no, Reason: "refused"},
				{Type: "a-type-from-a-newer-queen", Time: at},
			},
			want: []string{"03:04:05 hive gpu1 reachable", "03:04:05 hive gpu2 unreachable refused"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var auth recorder[string]
			url := eventsQueen(t, &auth, tc.events...)
			t.Setenv(envAPIKey, "rbee_test")

			res := runKeeper(t, "", "--queen-url", url, "watch")

			assert.Equal(t, res.stdout, strings.Join(tc.want, "\n")+"\n")
			assert.Check(t, res.code != 0)
			assert.Check(t, cmp.Contains(res.stderr, "the queen is shutting down"))
			assert.DeepEqual(t, auth.all(), []string{"Bearer rbee_test"})
		})
	}
}

func TestWatchDrawsATable(t *testing.T) {
	v := &fleetView{hives: map[string]api.Hive{"gpu1": {Name: "gpu1"}},
		workers: map[string]*api.WorkerSummary{}, hiveOf: map[string]string{}}
	v.apply(api.Event{Type: api.EventWorker, WorkerID: "w-1", Hive: "gpu1", Model: "tiny",
		State: api.WorkerReady})
	v.apply(api.Event{Type: api.EventSummary, Workers: []api.WorkerSummary{{ID: "w-1",
		Model: "tiny", State: api.WorkerReady, SlotsBusy: 2, SlotsTotal: 4, GenTokensPerSec: 9}}})
	var b strings.Builder

	v.draw(&b, time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local))

	out := b.String()
	assert.Check(t, strings.HasPrefix(out, "\x1b[H\x1b[2J"), "clears the screen")
	assert.Check(t, cmp.Contains(out, "gpu1             unreachable"))
	assert.Check(t, cmp.Regexp(`w-1 +gpu1 +tiny +ready +2/4 +9\.0`, out))
}
