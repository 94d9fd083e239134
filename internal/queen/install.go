package queen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
)

// installTimeout bounds a whole install: the worker binary is tens of MB.
const installTimeout = 10 * time.Minute

// remoteSums prints, for each path argument (~/ is $HOME), the sha256 of
// that file, or "-" when there is none: a constant script whose values are
// all positional parameters.
const remoteSums = `for f; do
case $f in "~/"*) f=$HOME/${f#"~/"} ;; esac
if [ ! -f "$f" ]; then echo -
elif command -v sha256sum >/dev/null 2>&1; then sha256sum < "$f"
else shasum -a 256 < "$f"; fi
done`

// remoteRemove removes each path argument that exists (~/ is $HOME) and
// prints the argument.
const remoteRemove = `for f; do
p=$f
case $p in "~/"*) p=$HOME/${p#"~/"} ;; esac
if [ -e "$p" ]; then rm -f -- "$p" && echo "$f"; fi
done`

// installFile is one file install copies: from local to remote.
type installFile struct {
	local, remote string
}

// installFiles lists what goes to hive h: rbee-hive, llm-worker-rbee, and
// the GPU backends under lib/ollama when this machine has them.
func (s *Server) installFiles(h registry.Hive) ([]installFile, error) {
	dir := s.cfg.InstallBinDir
	remoteDir := path.Dir(h.HiveBin)
	files := []installFile{
		{filepath.Join(dir, "rbee-hive"), h.HiveBin},
		{filepath.Join(dir, "llm-worker-rbee"), remoteDir + "/llm-worker-rbee"},
	}
	for _, f := range files {
		if fi, err := os.Stat(f.local); err != nil || !fi.Mode().IsRegular() {
			return nil, &httpapi.Error{Status: http.StatusInternalServerError,
				Type: "server_error", Code: "install_files_missing", Message: fmt.Sprintf(
					"the queen has no %s to install: build it with `make build`, or start "+
						"queen-rbee with --install-bin-dir DIR", f.local)}
		}
	}
	libs, _ := os.ReadDir(filepath.Join(dir, "lib", "ollama")) // optional
	for _, e := range libs {
		if e.Type().IsRegular() {
			files = append(files, installFile{filepath.Join(dir, "lib", "ollama", e.Name()),
				remoteDir + "/lib/ollama/" + e.Name()})
		}
	}
	return files, nil
}

func (s *Server) handleInstallHive(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), installTimeout)
	defer cancel()
	h, err := s.remoteHive(ctx, chi.URLParam(r, "name"), "install")
	if err != nil {
		return err
	}
	files, err := s.installFiles(h)
	if err != nil {
		return err
	}
	log := s.log.With("hive", h.Name)
	s.hives.setVerified(h.Name, false)

	if err := s.checkArch(ctx, h, files[:2]); err != nil {
		return err
	}
	remote := make([]string, len(files))
	for i, f := range files {
		remote[i] = f.remote
	}
	have, err := s.remoteSums(ctx, h, remote)
	if err != nil {
		return err
	}

	result := api.HiveInstallResult{Files: make([]api.InstalledFile, 0, len(files))}
	for i, f := range files {
		done, err := s.installOne(ctx, h, f, have[i])
		if err != nil {
			return err
		}
		log.Info("hive file installed", "path", done.Path, "action", done.Action)
		result.Files = append(result.Files, done)
	}

	ct, _, err := s.contact(ctx, s.hives, h)
	if storeErr := s.store.SetHiveContact(context.WithoutCancel(ctx), h.Name, ct); storeErr != nil {
		return storeErr
	}
	if err != nil {
		return err
	}
	h.Contact = ct
	result.Hive = h.Public()
	log.Info("hive installed", "version", ct.Version, "arch", ct.Arch)
	httpapi.WriteJSON(w, http.StatusOK, result)
	return nil
}

// installOne uploads f unless the hive has the same bytes (remoteSum).
func (s *Server) installOne(ctx context.Context, h registry.Hive, f installFile,
	remoteSum string) (api.InstalledFile, error) {
	out := api.InstalledFile{Path: f.remote}
	file, err := os.Open(f.local)
	if err != nil {
		return out, err
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return out, err
	}
	out.Size = fi.Size()
	sum := sha256.New()
	if _, err := io.Copy(sum, file); err != nil {
		return out, fmt.Errorf("hash %s: %w", f.local, err)
	}
	out.SHA256 = hex.EncodeToString(sum.Sum(nil))
	if out.SHA256 == remoteSum {
		out.Action = "unchanged"
		return out, nil
	}
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		return out, err
	}
	got, err := s.hives.pool.Upload(ctx, target(h), file, out.Size, f.remote, 0o755)
	if err != nil {
		return out, sshError(h.Name, err)
	}
	out.SHA256, out.Action = got, "uploaded"
	return out, nil
}

// remoteSums returns the sha256 of each remote path, "-" for a missing one.
func (s *Server) remoteSums(ctx context.Context, h registry.Hive, paths []string) ([]string, error) {
	argv := append([]string{"sh", "-c", remoteSums, "rbee-sums"}, paths...)
	res, err := s.hives.pool.Run(ctx, target(h), argv, nil)
	if err != nil {
		return nil, sshError(h.Name, err)
	}
	var sums []string
	sc := bufio.NewScanner(bytes.NewReader(res.Stdout))
	for sc.Scan() {
		field, _, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		sums = append(sums, field)
	}
	if res.ExitCode != 0 || len(sums) != len(paths) {
		return nil, httpapi.Upstream(nil, "hive %q: hashing the installed files failed "+
			"(exit %d): %s", h.Name, res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	return sums, nil
}

// checkArch refuses to install binaries built for another architecture
// than the hive's (`uname -m`).
func (s *Server) checkArch(ctx context.Context, h registry.Hive, files []installFile) error {
	res, err := s.hives.pool.Run(ctx, target(h), []string{"uname", "-m"}, nil)
	if err != nil {
		return sshError(h.Name, err)
	}
	machine := strings.TrimSpace(string(res.Stdout))
	if res.ExitCode != 0 || machine == "" {
		return httpapi.Upstream(nil, "hive %q: `uname -m` failed (exit %d): %s",
			h.Name, res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	want := goArch(machine)
	for _, f := range files {
		got, err := elfArch(f.local)
		if err != nil {
			return &httpapi.Error{Status: http.StatusInternalServerError, Type: "server_error",
				Code: "install_files_bad", Err: err,
				Message: fmt.Sprintf("cannot install %s: %v", f.local, err)}
		}
		if got != want {
			return &httpapi.Error{Status: http.StatusBadRequest, Type: "invalid_request_error",
				Code: "arch_mismatch", Message: fmt.Sprintf(
					"hive %q is %s (%s), but %s is built for %s: build rbee for %s "+
						"(GOARCH=%s, and the worker with a C cross-compiler) and start "+
						"queen-rbee with --install-bin-dir pointing at those binaries",
					h.Name, machine, want, f.local, got, want, want)}
		}
	}
	return nil
}

// goArch names a `uname -m` machine as Go does.
func goArch(machine string) string {
	switch machine {
	case "x86_64", "amd64":
		return "amd64"
	case "aarch64", "arm64", "armv8l":
		return "arm64"
	case "i386", "i486", "i586", "i686":
		return "386"
	}
	if strings.HasPrefix(machine, "armv") {
		return "arm"
	}
	return machine // riscv64, ppc64le, s390x, loong64 read the same
}

// elfArch reads which architecture an ELF executable is built for.
func elfArch(file string) (string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", fmt.Errorf("not a Linux executable: %w", err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_386:
		return "386", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_S390:
		return "s390x", nil
	}
	return strings.ToLower(strings.TrimPrefix(f.Machine.String(), "EM_")), nil
}

func (s *Server) handleUninstallHive(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	force := r.URL.Query().Get("force") == "true"
	h, err := s.remoteHive(ctx, chi.URLParam(r, "name"), "uninstall")
	if err != nil {
		return err
	}
	active, err := s.store.ActiveWorkersOn(ctx, h.Name)
	if err != nil {
		return err
	}
	if len(active) > 0 && !force {
		return workersRunning(h.Name, active, "uninstall")
	}
	result := api.HiveUninstallResult{Hive: h.Name, Removed: []string{}}
	for _, id := range active {
		if err := s.stopOn(ctx, h, id); err != nil {
			s.log.Warn("stop before uninstall failed", "hive", h.Name, "worker_id", id,
				"error", err)
			continue
		}
		result.Stopped = append(result.Stopped, id)
	}

	files, err := s.installFiles(h)
	if err != nil {
		return err
	}
	argv := []string{"sh", "-c", remoteRemove, "rbee-remove"}
	for _, f := range files {
		argv = append(argv, f.remote)
	}
	s.hives.setVerified(h.Name, false)
	res, err := s.hives.pool.Run(ctx, target(h), argv, nil)
	if err != nil {
		return sshError(h.Name, err)
	}
	if res.ExitCode != 0 {
		return httpapi.Upstream(nil, "hive %q: removing files failed (exit %d): %s",
			h.Name, res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	for line := range strings.Lines(string(res.Stdout)) {
		result.Removed = append(result.Removed, strings.TrimSpace(line))
	}
	ct := registry.Contact{Reachable: true, CheckedAt: time.Now(),
		LastError: fmt.Sprintf("rbee-hive is not installed: run `rbee hive install %s`", h.Name)}
	if err := s.store.SetHiveContact(ctx, h.Name, ct); err != nil {
		return err
	}
	s.log.Info("hive uninstalled", "hive", h.Name, "removed", len(result.Removed))
	httpapi.WriteJSON(w, http.StatusOK, result)
	return nil
}

// stopOn stops worker id through its hive and records it stopped.
func (s *Server) stopOn(ctx context.Context, h registry.Hive, id string) error {
	s.router.setState(id, api.WorkerDraining)
	var res api.StopResult
	err := s.hives.run(ctx, h, []string{"worker", "stop", id,
		"--timeout", stopTimeout.String()}, "", &res)
	if err != nil && httpapi.AsError(err).Status != http.StatusNotFound {
		return err
	}
	s.forget(id)
	return s.setWorkerState(ctx, id, api.WorkerStopped, "")
}
