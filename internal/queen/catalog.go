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
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
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

// handleCatalog lists the models of every hive, one entry per file with
// the hives that hold it (GET /v1/catalog). A hive that cannot be asked is
// named in Unreachable; it does not fail the list.
func (s *Server) handleCatalog(w http.ResponseWriter, r *http.Request) error {
	hives, err := s.store.Hives(r.Context())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), placementTimeout)
	defer cancel()
	lists := make([]hiveModels, len(hives))
	var wg sync.WaitGroup
	for i, h := range hives {
		wg.Go(func() {
			var list api.ModelList
			lists[i] = hiveModels{hive: h.Name,
				err: s.hives.run(ctx, h, []string{"model", "list"}, "", &list)}
			lists[i].models = list.Models
		})
	}
	wg.Wait()
	httpapi.WriteJSON(w, http.StatusOK, mergeCatalog(lists))
	return nil
}

// hiveModels is one hive's catalog, or why it could not be read.
type hiveModels struct {
	hive   string
	models []api.Model
	err    error
}

// mergeCatalog groups the hives' models by name and sha256: one entry per
// distinct file, sorted by name, entries that share a name but not a file
// marked NameConflict.
func mergeCatalog(lists []hiveModels) api.Catalog {
	out := api.Catalog{Models: []api.CatalogModel{}}
	type key struct{ name, sha string }
	index := map[key]int{}
	for _, l := range lists {
		if l.err != nil {
			out.Unreachable = append(out.Unreachable, api.CatalogHiveError{Hive: l.hive,
				Error: httpapi.AsError(l.err).Message})
			continue
		}
		for _, m := range l.models {
			k := key{m.Name, m.SHA256}
			i, ok := index[k]
			if !ok {
				i = len(out.Models)
				index[k] = i
				out.Models = append(out.Models, catalogModel(m))
			}
			out.Models[i].Hives = append(out.Models[i].Hives, l.hive)
		}
	}
	perName := map[string]int{}
	for _, m := range out.Models {
		perName[m.Name]++
	}
	for i := range out.Models {
		sort.Strings(out.Models[i].Hives)
		out.Models[i].NameConflict = perName[out.Models[i].Name] > 1
	}
	sort.SliceStable(out.Models, func(i, j int) bool {
		a, b := out.Models[i], out.Models[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Hives[0] < b.Hives[0]
	})
	return out
}

// catalogModel is m without what differs from hive to hive (its path and
// dates).
func catalogModel(m api.Model) api.CatalogModel {
	m.Path, m.AddedAt, m.LastUsedAt = "", time.Time{}, time.Time{}
	return api.CatalogModel{Model: m, Hives: []string{}}
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
	args, stdin, err := downloadArgs(req)
	if err != nil {
		return err
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
	res, err := s.hives.streamIn(r.Context(), h, args, stdin, func(line []byte) {
		if ev, ok := progressLine(line); ok {
			progress(ev)
			send(api.DownloadEvent{ModelEvent: ev})
			return
		}
		last = bytes.Clone(line)
	})
	m, err := downloadOutcome(h.Name, args, res, last, err)
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

// progressLine reads a line of `rbee-hive model download` as a progress
// event; ok is false for any other line (the result, or noise).
func progressLine(line []byte) (ev api.ModelEvent, ok bool) {
	return ev, json.Unmarshal(line, &ev) == nil && ev.Event == "progress"
}

// downloadOutcome is the model a finished download command produced, from
// its last line that was not progress, or the error: runErr (the command
// could not run), the hive's error result, or a result rbee cannot read.
func downloadOutcome(hive string, args []string, res sshexec.Result, last []byte,
	runErr error) (api.Model, error) {
	var m api.Model
	if runErr != nil {
		return m, runErr
	}
	if res.ExitCode != api.HiveExitOK {
		res.Stdout = last
		return m, hiveFailure(hive, args, res)
	}
	if err := json.Unmarshal(last, &m); err != nil {
		return m, httpapi.Upstream(err, "hive %q printed a result rbee cannot read", hive)
	}
	return m, nil
}

// downloadArgs is the hive command of a download request, and its stdin:
// the user's Hugging Face token, which must not be in argv (`ps` on the
// hive shows argv), nor logged, nor stored.
func downloadArgs(req api.ModelDownloadRequest) ([]string, io.Reader, error) {
	args := []string{"model", "download", req.Ref}
	if req.Revision != "" {
		args = append(args, "--revision", req.Revision)
	}
	if req.Name != "" {
		args = append(args, "--name", req.Name)
	}
	if req.HFEndpoint != "" {
		u, err := url.Parse(req.HFEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, nil, httpapi.BadRequest("hf_endpoint",
				"hf_endpoint must be an http(s) URL, got %q", req.HFEndpoint)
		}
		args = append(args, "--hf-endpoint", req.HFEndpoint)
	}
	if req.HFToken == "" {
		return args, nil, nil
	}
	if strings.ContainsFunc(req.HFToken, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, nil, httpapi.BadRequest("hf_token",
			"hf_token holds spaces or control characters: pass the token alone")
	}
	return append(args, "--hf-token-stdin"), strings.NewReader(req.HFToken + "\n"), nil
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
	return c.streamIn(ctx, h, args, nil, onLine)
}

// streamIn is stream with stdin (nil: none) as the command's stdin.
func (c *hiveClient) streamIn(ctx context.Context, h registry.Hive, args []string,
	stdin io.Reader, onLine func([]byte)) (sshexec.Result, error) {
	argv := c.argv(h, args...)
	if !h.Local {
		if c.pool == nil {
			_, err := c.runnerFor(h)
			return sshexec.Result{}, err
		}
		return c.pool.Stream(ctx, target(h), argv, stdin, onLine)
	}

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = stdin
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
