package queen

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
)

func TestDashboardIsPublicAndDataIsNot(t *testing.T) {
	ks := newKeyServer(t, "127.0.0.1:7833", keySpec{"admin", api.KeyScopeAdmin})
	tests := []struct {
		name       string
		path       string
		wantStatus int
		wantType   string
		wantBody   string
	}{
		{name: "page", path: "/", wantStatus: http.StatusOK, wantType: "text/html",
			wantBody: "/ui/app.js"},
		{name: "script", path: "/ui/app.js", wantStatus: http.StatusOK,
			wantType: "text/javascript", wantBody: "rbee.key."},
		{name: "style", path: "/ui/style.css", wantStatus: http.StatusOK, wantType: "text/css"},
		{name: "missing asset", path: "/ui/nope.js", wantStatus: http.StatusNotFound},
		{name: "data needs a key", path: "/v1/workers", wantStatus: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ks.ts.Client().Get(ks.ts.URL + tc.path)
			assert.NilError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			assert.NilError(t, err)
			assert.Equal(t, resp.StatusCode, tc.wantStatus)
			assert.Check(t, is.Contains(resp.Header.Get("Content-Type"), tc.wantType))
			assert.Check(t, is.Contains(string(body), tc.wantBody))
		})
	}
}

func TestEventsTakeTheKeyAsASubprotocol(t *testing.T) {
	ks := newKeyServer(t, "127.0.0.1:7833",
		keySpec{"admin", api.KeyScopeAdmin}, keySpec{"app", api.KeyScopeInference})
	var logs bytes.Buffer
	ks.s.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts := httptest.NewServer(ks.s.routes())
	t.Cleanup(ts.Close)
	url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/v1/events"

	tests := []struct {
		name       string
		protocols  []string
		header     http.Header
		wantStatus int
		wantProto  string
	}{
		{name: "admin key as subprotocol",
			protocols:  []string{"rbee.v1", "rbee.key." + ks.secrets["admin"]},
			wantStatus: http.StatusSwitchingProtocols, wantProto: "rbee.v1"},
		{name: "key first in the list",
			protocols:  []string{"rbee.key." + ks.secrets["admin"], "rbee.v1"},
			wantStatus: http.StatusSwitchingProtocols, wantProto: "rbee.v1"},
		{name: "header still works",
			header:     http.Header{"Authorization": {"Bearer " + ks.secrets["admin"]}},
			wantStatus: http.StatusSwitchingProtocols},
		{name: "no key", protocols: []string{"rbee.v1"},
			wantStatus: http.StatusUnauthorized},
		{name: "wrong key", protocols: []string{"rbee.v1", "rbee.key.rbee_nope"},
			wantStatus: http.StatusUnauthorized},
		{name: "empty key", protocols: []string{"rbee.v1", "rbee.key."},
			wantStatus: http.StatusUnauthorized},
		{name: "inference key", protocols: []string{"rbee.v1", "rbee.key." + ks.secrets["app"]},
			wantStatus: http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dialer := websocket.Dialer{Subprotocols: tc.protocols}
			conn, resp, err := dialer.Dial(url, tc.header)
			assert.Assert(t, resp != nil, "dial: %v", err)
			defer resp.Body.Close()
			assert.Equal(t, resp.StatusCode, tc.wantStatus)
			if tc.wantStatus != http.StatusSwitchingProtocols {
				return
			}
			defer conn.Close()
			assert.Check(t, is.Equal(conn.Subprotocol(), tc.wantProto))
			for name, values := range resp.Header {
				assert.Check(t, !strings.Contains(strings.Join(values, ","), "rbee_"),
					"header %s echoes the key", name)
			}
			var ev api.Event
			assert.NilError(t, conn.ReadJSON(&ev))
			assert.Check(t, is.Equal(ev.Type, api.EventSummary))
		})
	}

	// Also on the way out: the rejected and accepted calls left no key in
	// the log.
	ts.Close()
	for name, secret := range ks.secrets {
		assert.Check(t, !strings.Contains(logs.String(), secret), "the log holds key %s", name)
	}
}

func TestRouteAccessOfTheDashboard(t *testing.T) {
	tests := []struct {
		name   string
		method string
		path   string
		want   access
	}{
		{name: "page", method: http.MethodGet, path: "/", want: accessPublic},
		{name: "asset", method: http.MethodGet, path: "/ui/app.js", want: accessPublic},
		{name: "post to page", method: http.MethodPost, path: "/", want: accessAdmin},
		{name: "out of the assets", method: http.MethodGet, path: "/ui/../v1/workers",
			want: accessAdmin},
		{name: "events", method: http.MethodGet, path: "/v1/events", want: accessAdmin},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, routeAccess(tc.method, tc.path), tc.want)
		})
	}
}
