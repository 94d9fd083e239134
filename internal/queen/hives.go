package queen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

// hiveNameSyntax is what a hive may be called: it appears in URLs and
// command lines.
var hiveNameSyntax = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func (s *Server) handleListHives(w http.ResponseWriter, r *http.Request) error {
	hives, err := s.store.Hives(r.Context())
	if err != nil {
		return err
	}
	list := api.HiveList{Hives: make([]api.Hive, 0, len(hives))}
	for _, h := range hives {
		list.Hives = append(list.Hives, h.Public())
	}
	httpapi.WriteJSON(w, http.StatusOK, list)
	return nil
}

// hive looks a hive up, as a 404 when it does not exist.
func (s *Server) hive(ctx context.Context, name string) (registry.Hive, error) {
	h, err := s.store.Hive(ctx, name)
	if errors.Is(err, registry.ErrNotFound) {
		return h, httpapi.NotFound("hive_not_found", "no hive %q: see `rbee hive list`", name)
	}
	return h, err
}

// remoteHive looks up a hive that is reached over SSH.
func (s *Server) remoteHive(ctx context.Context, name, what string) (registry.Hive, error) {
	h, err := s.hive(ctx, name)
	if err == nil && h.Local {
		err = httpapi.BadRequest("name", "hive %q is the queen's own machine: it uses the "+
			"binaries beside queen-rbee, and has nothing to %s", name, what)
	}
	return h, err
}

func (s *Server) handleAddHive(w http.ResponseWriter, r *http.Request) error {
	var req api.HiveAddRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	h, err := s.planHive(req)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := s.store.Hive(ctx, h.Name); err == nil {
		return hiveExists(h.Name)
	}

	// Connect before recording, so that a host key or login problem is
	// refused at once with its fix. A hive that is down is recorded anyway.
	pool := s.hives.pool
	if req.AcceptNewHostKey {
		pool = sshexec.NewPool(s.sshConfig(true))
		defer pool.Close()
	}
	probe := &hiveClient{pool: pool}
	contact, _, err := s.contact(ctx, probe, h)
	if err != nil {
		switch httpapi.AsError(err).Code {
		case "unknown_host_key", "host_key_changed", "ssh_auth_failed":
			return err
		}
	}

	if err := s.store.CreateHive(ctx, h); errors.Is(err, registry.ErrExists) {
		return hiveExists(h.Name)
	} else if err != nil {
		return err
	}
	if err := s.store.SetHiveContact(ctx, h.Name, contact); err != nil {
		return err
	}
	s.log.Info("hive added", "hive", h.Name, "host", h.Host, "reachable", contact.Reachable)
	h, err = s.hive(ctx, h.Name)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, h.Public())
	return nil
}

func hiveExists(name string) error {
	return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
		Code: "hive_exists", Param: "name",
		Message: fmt.Sprintf("hive %q exists: remove it first with `rbee hive rm %s`", name, name)}
}

// planHive checks an add request and resolves its SSH destination.
func (s *Server) planHive(req api.HiveAddRequest) (registry.Hive, error) {
	if !hiveNameSyntax.MatchString(req.Name) {
		return registry.Hive{}, httpapi.BadRequest("name",
			"hive name %q: use 1-64 of letters, digits, '_', '.', '-'", req.Name)
	}
	if req.Name == registry.LocalHive {
		return registry.Hive{}, hiveExists(req.Name)
	}
	if (req.SSH == "") == (req.SSHAlias == "") {
		return registry.Hive{}, httpapi.BadRequest("ssh",
			"give either ssh (user@host[:port]) or ssh_alias (a Host of ~/.ssh/config)")
	}
	if req.KeyPath != "" && !filepath.IsAbs(req.KeyPath) {
		return registry.Hive{}, httpapi.BadRequest("key_path",
			"key_path %q must be an absolute path on the queen's machine", req.KeyPath)
	}

	var t sshexec.Target
	alias := req.SSHAlias
	if alias == "" && !strings.ContainsAny(req.SSH, "@:[") {
		// A bare name: an alias when ~/.ssh/config declares one, else a host.
		if _, err := sshexec.ResolveAlias(req.SSH, s.cfg.SSHConfigPath); err == nil {
			alias = req.SSH
		}
	}
	if alias != "" {
		var err error
		t, err = sshexec.ResolveAlias(alias, s.cfg.SSHConfigPath)
		if err != nil {
			return registry.Hive{}, httpapi.BadRequest("ssh_alias", "%v", err)
		}
	} else {
		var err error
		t, err = parseSSH(req.SSH)
		if err != nil {
			return registry.Hive{}, httpapi.BadRequest("ssh", "%v", err)
		}
	}
	if req.KeyPath != "" {
		t.KeyPath = req.KeyPath
	}
	return registry.Hive{Name: req.Name, Host: t.Host, SSHUser: t.User, SSHPort: t.Port,
		KeyPath: t.KeyPath, Alias: alias, HiveBin: registry.DefaultHiveBin}, nil
}

// parseSSH reads user@host[:port]; host may be an IPv6 address in [].
func parseSSH(s string) (sshexec.Target, error) {
	var t sshexec.Target
	user, rest, ok := strings.Cut(s, "@")
	if !ok {
		user, rest = "", s
	}
	t.User = user
	host, port := rest, ""
	if strings.HasPrefix(rest, "[") || strings.Count(rest, ":") == 1 {
		var err error
		host, port, err = net.SplitHostPort(rest)
		if err != nil && strings.HasPrefix(rest, "[") && strings.HasSuffix(rest, "]") {
			host, port, err = strings.Trim(rest, "[]"), "", nil
		}
		if err != nil {
			return t, fmt.Errorf("ssh %q: want user@host[:port]", s)
		}
	}
	if host == "" || strings.ContainsAny(host, " /@") || strings.ContainsAny(user, " :/") {
		return t, fmt.Errorf("ssh %q: want user@host[:port]", s)
	}
	t.Host, t.Port = host, 22
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return t, fmt.Errorf("ssh %q: port %q is not 1-65535", s, port)
		}
		t.Port = n
	}
	return t, nil
}

// contact runs `rbee-hive version` on h with c, says what it found, and
// tells event subscribers; the error is that of the run, for callers that
// need one.
func (s *Server) contact(ctx context.Context, c *hiveClient, h registry.Hive) (registry.Contact,
	api.HiveVersion, error) {
	ct, v, err := s.reach(ctx, c, h)
	s.hiveEvent(h.Name, ct.Reachable, ct.LastError)
	return ct, v, err
}

// reach is contact without the event: the hive probe publishes one only
// when something changed.
func (s *Server) reach(ctx context.Context, c *hiveClient, h registry.Hive) (registry.Contact,
	api.HiveVersion, error) {
	v, err := c.version(ctx, h)
	ct := registry.Contact{CheckedAt: time.Now()}
	var apiErr *httpapi.Error
	switch {
	case err == nil:
		ct.Reachable, ct.Version, ct.ProtocolVersion, ct.OS, ct.Arch =
			true, v.Version, v.ProtocolVersion, v.OS, v.Arch
		err = checkProtocol(h.Name, v)
		if err != nil {
			ct.LastError = httpapi.AsError(err).Message
		}
	case errors.As(err, &apiErr) && (apiErr.Code == "hive_not_installed" ||
		apiErr.Code == "hive_version_mismatch" || apiErr.Code == "hive_failed"):
		// SSH works; rbee-hive does not (yet).
		ct.Reachable, ct.LastError = true, apiErr.Message
	default:
		ct.LastError = httpapi.AsError(err).Message
	}
	if c == s.hives {
		s.hives.setVerified(h.Name, err == nil)
	}
	return ct, v, err
}

func (s *Server) handleCheckHive(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	h, err := s.hive(ctx, chi.URLParam(r, "name"))
	if err != nil {
		return err
	}
	ct, _, err := s.contact(ctx, s.hives, h)
	if err != nil {
		s.log.Warn("hive check failed", "hive", h.Name, "error", err)
	}
	if err := s.store.SetHiveContact(context.WithoutCancel(ctx), h.Name, ct); err != nil {
		return err
	}
	h.Contact = ct
	httpapi.WriteJSON(w, http.StatusOK, h.Public())
	return nil
}

func (s *Server) handleDeleteHive(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	force := r.URL.Query().Get("force") == "true"
	h, err := s.remoteHive(ctx, chi.URLParam(r, "name"), "remove")
	if err != nil {
		return err
	}
	if err := s.refuseIfDeployed(ctx, h.Name); err != nil {
		return err
	}
	active, err := s.store.ActiveWorkersOn(ctx, h.Name)
	if err != nil {
		return err
	}
	err = s.store.DeleteHive(ctx, h.Name, force)
	if errors.Is(err, registry.ErrInUse) {
		return workersRunning(h.Name, active, "rm")
	}
	if err != nil {
		return err
	}
	for _, id := range active {
		s.forget(id)
	}
	s.hives.setVerified(h.Name, false)
	s.log.Info("hive removed", "hive", h.Name, "forgotten_workers", len(active))
	httpapi.WriteJSON(w, http.StatusOK, h.Public())
	return nil
}

// refuseIfDeployed refuses to remove a hive a deployment is pinned to
// (--hive), even with force: the deployment would keep trying to spawn
// there.
func (s *Server) refuseIfDeployed(ctx context.Context, hive string) error {
	deps, err := s.store.Deployments(ctx)
	if err != nil {
		return err
	}
	for _, d := range deps {
		if d.Hive == hive {
			return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
				Code: "hive_deployed", Message: fmt.Sprintf("deployment %q is pinned to hive %q: "+
					"remove it first (`rbee deploy rm %s`), or deploy it again without --hive",
					d.Name, hive, d.Name)}
		}
	}
	return nil
}

func workersRunning(hive string, ids []string, cmd string) error {
	return &httpapi.Error{Status: http.StatusConflict, Type: "invalid_request_error",
		Code: "workers_running", Message: fmt.Sprintf(
			"hive %q runs %d workers (%s): stop them first with `rbee worker stop ID`, "+
				"or pass --force (`rbee hive %s %s --force`)",
			hive, len(ids), strings.Join(ids, ", "), cmd, hive)}
}

// remoteQueenURL is the URL workers on remote hives send heartbeats to:
// the advertised one, else the listening address when it is a specific
// address beyond loopback; empty when there is none.
func (s *Server) remoteQueenURL() string {
	if s.cfg.AdvertiseURL != "" {
		return s.cfg.AdvertiseURL
	}
	u, err := url.Parse(s.queenURL)
	if err != nil {
		return ""
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
		return ""
	}
	return s.queenURL
}

// queenURLFor is where workers on hive h reach this queen.
func (s *Server) queenURLFor(h registry.Hive) string {
	if h.Local {
		return s.queenURL
	}
	return s.remoteQueenURL()
}

// canReachQueen refuses a spawn on a remote hive whose workers could not
// send heartbeats to this queen.
func (s *Server) canReachQueen(h registry.Hive) error {
	if h.Local || s.remoteQueenURL() != "" {
		return nil
	}
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(s.queenURL, "http://"))
	return &httpapi.Error{Status: http.StatusBadRequest, Type: "invalid_request_error",
		Code: "queen_unreachable", Param: "hive", Message: fmt.Sprintf(
			"workers on hive %q could not reach this queen: it listens on %s only and "+
				"has no advertised URL. Either restart it with --addr 0.0.0.0:%s and "+
				"--advertise-url http://THIS-HOST:%s (beyond loopback it needs an admin API "+
				"key: `rbee key create --name admin --scope admin`), or open an SSH reverse "+
				"tunnel from the hive (ssh -R %s:127.0.0.1:%s %s) and restart the queen "+
				"with --advertise-url http://127.0.0.1:%s",
			h.Name, s.queenURL, port, port, port, port, h.Host, port)}
}
