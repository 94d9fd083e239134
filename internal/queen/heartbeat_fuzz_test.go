package queen

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rbee-dev/rbee/internal/api"
)

// fuzzWorker is the worker FuzzHeartbeatBody's queen knows.
const fuzzWorker = "w-fuzz"

// heartbeatStatuses are the answers a heartbeat may get; anything else,
// a 5xx above all, is a bug.
var heartbeatStatuses = map[int]bool{
	http.StatusOK:                    true,
	http.StatusBadRequest:            true, // malformed body, missing or bad field
	http.StatusUnauthorized:          true, // token of another worker
	http.StatusNotFound:              true, // unknown worker
	http.StatusConflict:              true, // protocol mismatch
	http.StatusGone:                  true, // stopped worker
	http.StatusRequestEntityTooLarge: true,
}

// FuzzHeartbeatBody posts arbitrary bodies to POST /v1/heartbeat, with the
// token of a worker the queen knows: the queen must answer each with one
// of heartbeatStatuses and, short of a 200, an error body.
func FuzzHeartbeatBody(f *testing.F) {
	for _, state := range []api.WorkerState{api.WorkerReady, api.WorkerLoading,
		api.WorkerDraining, api.WorkerFailed, api.WorkerStopped, api.WorkerLost} {
		body, _ := json.Marshal(api.Heartbeat{WorkerID: fuzzWorker, State: state,
			ProtocolVersion: api.ProtocolVersion, URL: "http://127.0.0.1:1", SlotsBusy: 1,
			GenTokensPerSec: 12.5, VRAM: []api.DeviceMemory{{Index: 0, Name: "gpu"}}})
		f.Add(body)
	}
	f.Add([]byte(`{"worker_id":"w-fuzz","protocol_version":999,"state":"ready"}`))
	f.Add([]byte(`{"worker_id":"w-other","protocol_version":1,"state":"ready"}`))
	f.Add([]byte(`{"worker_id":"w-fuzz","state":"ready","slots_busy":-1,"error":"\u0000"}`))
	f.Add([]byte(`{"worker_id":""}`))
	f.Add([]byte(`{"worker_id":"w-fuzz","state":"ready"} trailing`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))

	s, _ := newTestServer(f)
	hbSeed(f, s.store, fuzzWorker, api.WorkerReady)
	routes := s.routes()
	f.Fuzz(func(t *testing.T, body []byte) {
		// Each input starts from a ready worker, whatever the last one did
		// (a beat that changes the state drops the worker from the index).
		if w, _, ok := s.hbIndex.get(fuzzWorker); !ok || w.state != api.WorkerReady {
			err := s.setWorkerState(context.Background(), fuzzWorker, api.WorkerReady, "")
			if err != nil {
				t.Fatal(err)
			}
		}
		req := httptest.NewRequest(http.MethodPost, "/v1/heartbeat", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer token-"+fuzzWorker)
		rec := httptest.NewRecorder()
		routes.ServeHTTP(rec, req)
		checkAnswer(t, rec, heartbeatStatuses)
	})
}

// checkAnswer fails t unless rec's status is allowed and, when it is not
// a 2xx, its body is an error in OpenAI's shape.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, allowed map[int]bool) {
	t.Helper()
	if !allowed[rec.Code] {
		t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
	}
	if rec.Code < 300 {
		return
	}
	var e api.ErrorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Message == "" ||
		e.Error.Type == "" {
		t.Fatalf("status %d with a body that is no error: %q", rec.Code, rec.Body.String())
	}
}
