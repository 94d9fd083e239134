package queen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

func (s *Server) handleListHiveModels(w http.ResponseWriter, r *http.Request) error {
	h, err := s.hive(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		return err
	}
	var list api.ModelList
	if err := s.hives.run(r.Context(), h, []string{"model", "list"}, "", &list); err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) handleDeleteHiveModel(w http.ResponseWriter, r *http.Request) error {
	h, err := s.hive(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		return err
	}
	args := []string{"model", "rm", chi.URLParam(r, "model")}
	if r.URL.Query().Get("force") == "true" {
		args = append(args, "--force")
	}
	var out api.ModelRemoved
	if err := s.hives.run(r.Context(), h, args, "", &out); err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleHiveDevices(w http.ResponseWriter, r *http.Request) error {
	h, err := s.hive(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		return err
	}
	var out api.Devices
	if err := s.hives.run(r.Context(), h, []string{"devices"}, "", &out); err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// handleDownloadModel runs `rbee-hive model download` on the hive and
// relays its progress lines as server-sent events while they arrive.
func (s *Server) handleDownloadModel(w http.ResponseWriter, r *http.Request) error {
	var req api.ModelDownloadRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Hive == "" {
		return httpapi.BadRequest("hive", "missing hive")
	}
	if req.Ref == "" {
		return httpapi.BadRequest("ref", "missing ref (hf:ORG/REPO/FILE.gguf)")
	}
	h, err := s.hive(r.Context(), req.Hive)
	if err != nil {
		return err
	}
	if err := s.hives.verify(r.Context(), h); err != nil {
		return err
	}
	args := []string{"model", "download", req.Ref}
	if req.Revision != "" {
		args = append(args, "--revision", req.Revision)
	}
	if req.Name != "" {
		args = append(args, "--name", req.Name)
	}

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	send := func(ev api.DownloadEvent) {
		data, _ := json.Marshal(ev)
		fmt.Fprintf(w, "data: %s\n\n", data)
		if flusher != nil {
			flusher.Flush()
		}
	}

	var last []byte // the hive's result line: held back until it exits
	progress := s.downloadProgress(h.Name, req.Ref)
	res, err := s.hives.stream(r.Context(), h, args, func(line []byte) {
		var ev api.ModelEvent
		if json.Unmarshal(line, &ev) == nil && ev.Event == "progress" {
			progress(ev)
			send(api.DownloadEvent{ModelEvent: ev})
			return
		}
		last = bytes.Clone(line)
	})
	if err == nil && res.ExitCode != api.HiveExitOK {
		res.Stdout = last
		err = hiveFailure(h.Name, args, res)
	}
	var m api.Model
	if err == nil {
		if jerr := json.Unmarshal(last, &m); jerr != nil {
			err = httpapi.Upstream(jerr, "hive %q printed a result rbee cannot read", h.Name)
		}
	}
	if err != nil {
		var he *httpapi.Error
		if !errors.As(err, &he) {
			he = sshError(h.Name, err).(*httpapi.Error)
		}
		s.log.Warn("model download failed", "hive", h.Name, "error", he.Message)
		s.downloadEvent(h.Name, api.DownloadStatus{Ref: req.Ref, Status: "error", Error: he.Message})
		detail := httpapi.Body(he).Error
		send(api.DownloadEvent{ModelEvent: api.ModelEvent{Event: "error"}, Error: &detail})
		return nil
	}
	s.downloadEvent(h.Name, api.DownloadStatus{Ref: req.Ref, Status: "done", Bytes: m.Size})
	send(api.DownloadEvent{ModelEvent: api.ModelEvent{Event: "done"}, Model: &m})
	return nil
}

// downloadProgress returns the sink for one download's progress lines: it
// counts the newly fetched bytes in the metrics and publishes an event at
// most once a second, so that a fast download cannot flood the stream.
func (s *Server) downloadProgress(hive, ref string) func(api.ModelEvent) {
	var counted int64 = -1
	var published time.Time
	return func(ev api.ModelEvent) {
		if counted < 0 {
			counted = ev.Resumed // bytes already on disk were fetched before
		}
		if ev.Bytes > counted {
			s.metrics.downloadBytes.WithLabelValues(hive).Add(float64(ev.Bytes - counted))
			counted = ev.Bytes
		}
		if time.Since(published) < time.Second {
			return
		}
		published = time.Now()
		s.downloadEvent(hive, api.DownloadStatus{Ref: ref, Status: "progress",
			Bytes: ev.Bytes, Total: ev.Total, Rate: ev.Rate})
	}
}

// downloadEvent publishes where a download stands on the event stream.
func (s *Server) downloadEvent(hive string, st api.DownloadStatus) {
	s.events.publish(api.Event{Type: api.EventDownload, Hive: hive, Download: &st})
}

// verify checks a remote hive's protocol version once, as run does.
func (c *hiveClient) verify(ctx context.Context, h registry.Hive) error {
	if h.Local || c.isVerified(h.Name) {
		return nil
	}
	v, err := c.version(ctx, h)
	if err != nil {
		return err
	}
	if err := checkProtocol(h.Name, v); err != nil {
		return err
	}
	c.setVerified(h.Name, true)
	return nil
}

// stream runs a long hive command and hands each stdout line to onLine as
// it arrives: over the SSH pool for a remote hive, with os/exec here. No
// overall timeout: the hive's own stall timeout bounds a download.
func (c *hiveClient) stream(ctx context.Context, h registry.Hive, args []string,
	onLine func([]byte)) (sshexec.Result, error) {
	argv := c.argv(h, args...)
	if !h.Local {
		if c.pool == nil {
			_, err := c.runnerFor(h)
			return sshexec.Result{}, err
		}
		return c.pool.Stream(ctx, target(h), argv, nil, onLine)
	}

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if l, ok := c.local.(sshexec.Local); ok && len(l.Env) > 0 {
		cmd.Env = append(os.Environ(), l.Env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return sshexec.Result{}, err
	}
	if err := cmd.Start(); err != nil {
		return sshexec.Result{}, err
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		onLine(bytes.Clone(sc.Bytes()))
	}
	_, _ = io.Copy(io.Discard, out)
	err = cmd.Wait()
	res := sshexec.Result{Stderr: stderr.Bytes(), ExitCode: cmd.ProcessState.ExitCode()}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		err = nil // a non-zero exit is in ExitCode
	}
	return res, err
}
