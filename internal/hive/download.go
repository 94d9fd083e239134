package hive

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// Environment variables of Hugging Face's own tools, honoured as they do.
const (
	envHFEndpoint = "HF_ENDPOINT"
	envHFToken    = "HF_TOKEN"
	hfDefault     = "https://huggingface.co"
)

// hfSegment is one path segment of a Hugging Face reference or revision.
var hfSegment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// hfRef is a parsed hf:ORG/REPO/FILE reference.
type hfRef struct {
	repo string // ORG/REPO
	file string // path in the repo, ending in .gguf
}

func (r hfRef) String() string { return "hf:" + r.repo + "/" + r.file }

// parseHFRef parses hf:ORG/REPO/PATH.gguf. Every segment must be a plain
// name: no "..", no empty or absolute parts, nothing a URL or a file name
// could be steered with.
func parseHFRef(ref string) (hfRef, error) {
	rest, ok := strings.CutPrefix(ref, "hf:")
	if !ok {
		return hfRef{}, usageErrorf("invalid reference %q: use hf:ORG/REPO/FILE.gguf", ref)
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 3 {
		return hfRef{}, usageErrorf("invalid reference %q: use hf:ORG/REPO/FILE.gguf", ref)
	}
	for _, p := range parts {
		if !hfSegment.MatchString(p) || strings.Contains(p, "..") || len(p) > 255 {
			return hfRef{}, usageErrorf("invalid reference %q: segment %q must be 1 to 255 of "+
				"A-Z a-z 0-9 . _ -, without \"..\"", ref, p)
		}
	}
	if !strings.HasSuffix(rest, ".gguf") {
		return hfRef{}, usageErrorf("invalid reference %q: the file must end in .gguf", ref)
	}
	return hfRef{repo: parts[0] + "/" + parts[1], file: strings.Join(parts[2:], "/")}, nil
}

type downloadOptions struct {
	app          *app
	ref          string
	revision     string
	name         string
	stallTimeout time.Duration
	progress     time.Duration // between progress lines
	// endpoint is --hf-endpoint, else $HF_ENDPOINT, else Hugging Face.
	endpoint string
	// tokenStdin says to read the token from stdin's first line (the
	// queen forwards the user's there: never argv, which `ps` shows).
	tokenStdin bool
	// token is the bearer token for Hugging Face: from stdin, else
	// $HF_TOKEN; set by runDownload.
	token string
	// wrapWriter, when set, wraps the partial file's writer (tests inject
	// a full disk with it).
	wrapWriter func(io.Writer) io.Writer
}

func newModelDownloadCmd(a *app) *cobra.Command {
	opts := &downloadOptions{app: a}
	cmd := &cobra.Command{
		Use:   "download hf:ORG/REPO/FILE.gguf",
		Short: "Download a model from Hugging Face into the catalog (resumable, sha256-checked)",
		Args:  exactArgs(1),
		RunE: runE(func(ctx context.Context, args []string) error {
			opts.ref = args[0]
			return runDownload(ctx, opts)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&opts.revision, "revision", "main", "branch, tag or commit")
	f.StringVar(&opts.name, "name", "", "catalog name (default: file name without .gguf)")
	f.DurationVar(&opts.stallTimeout, "stall-timeout", 30*time.Second,
		"abort when no byte arrives for this long (the partial file is kept)")
	f.DurationVar(&opts.progress, "progress-interval", 500*time.Millisecond,
		"time between progress lines")
	f.StringVar(&opts.endpoint, "hf-endpoint", "", "Hugging Face endpoint, a mirror's URL "+
		"(default $"+envHFEndpoint+", else "+hfDefault+")")
	f.BoolVar(&opts.tokenStdin, "hf-token-stdin", false, "read the Hugging Face token from "+
		"stdin's first line (default $"+envHFToken+")")
	return cmd
}

// partialMeta is kept beside NAME.partial: what the bytes in it are.
type partialMeta struct {
	Source   string `json:"source"`
	Revision string `json:"revision"`
	SHA256   string `json:"sha256"`
}

// errStalled is the cause of a download cancelled for want of bytes.
var errStalled = errors.New("stalled")

func runDownload(ctx context.Context, opts *downloadOptions) error {
	ref, err := parseHFRef(opts.ref)
	if err != nil {
		return err
	}
	if !hfSegment.MatchString(opts.revision) || strings.Contains(opts.revision, "..") {
		return usageErrorf("invalid --revision %q", opts.revision)
	}
	if opts.stallTimeout <= 0 || opts.progress <= 0 {
		return usageErrorf("--stall-timeout and --progress-interval must be positive")
	}
	if err := opts.resolveHF(); err != nil {
		return err
	}
	name := opts.name
	if name == "" {
		name = strings.TrimSuffix(path.Base(ref.file), ".gguf")
	}
	if err := checkModelName(name); err != nil {
		return err
	}
	c, err := openCatalog(true)
	if err != nil {
		return err
	}

	// A complete entry is never touched: not re-fetched, never deleted.
	if m, err := c.get(name); err == nil {
		if m.Source == ref.String() {
			opts.app.log.Info("model already in the catalog", "model", name)
			return opts.app.printResult(m)
		}
		return usageErrorf("model %q is already in the catalog (from %s); "+
			"pass another --name", name, m.Source)
	} else if !errors.Is(err, errNoModel) {
		return err
	}

	d := &download{opts: opts, ref: ref, name: name, cat: c}
	return d.run(ctx)
}

// resolveHF settles the endpoint and token: the flags first (the user's,
// forwarded by the queen), else the hive's own environment.
func (opts *downloadOptions) resolveHF() error {
	if opts.endpoint == "" {
		opts.endpoint = os.Getenv(envHFEndpoint)
	}
	opts.endpoint = strings.TrimSuffix(opts.endpoint, "/")
	if opts.endpoint == "" {
		opts.endpoint = hfDefault
	}
	if u, err := url.Parse(opts.endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") ||
		u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return usageErrorf("invalid Hugging Face endpoint %q: use http(s)://HOST[/PATH]",
			opts.endpoint)
	}
	opts.token = os.Getenv(envHFToken)
	if opts.tokenStdin {
		token, err := readSecretLine(opts.app.stdin, "Hugging Face token")
		if err != nil {
			return err
		}
		opts.token = token
	}
	return nil
}

// maxHFTokenLen bounds the Hugging Face token read from stdin.
const maxHFTokenLen = 1024

// readSecretLine reads a token, what names it, from stdin's first line.
func readSecretLine(stdin io.Reader, what string) (string, error) {
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, maxHFTokenLen+2)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", failedErrorf("read the %s from stdin: %w", what, err)
	}
	token := strings.TrimSpace(line)
	switch {
	case token == "":
		return "", usageErrorf("no %s on stdin: write it as one line", what)
	case len(token) > maxHFTokenLen:
		return "", usageErrorf("the %s on stdin is longer than %d bytes", what, maxHFTokenLen)
	case strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "", usageErrorf("the %s on stdin holds spaces or control characters", what)
	}
	return token, nil
}

// download is one run of `model download`.
type download struct {
	opts *downloadOptions
	ref  hfRef
	name string
	cat  catalog
	file *os.File // NAME.partial, locked
	meta partialMeta
}

func (d *download) metaPath() string { return d.cat.partialPath(d.name) + ".json" }

func (d *download) run(ctx context.Context) error {
	f, err := os.OpenFile(d.cat.partialPath(d.name), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return failedErrorf("open partial file: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return usageErrorf("another download of %q is running on this hive", d.name)
	}
	d.file = f
	if data, err := os.ReadFile(d.metaPath()); err == nil {
		_ = json.Unmarshal(data, &d.meta) // a bad one is as good as none
	}
	if d.meta.Source != d.ref.String() || d.meta.Revision != d.opts.revision {
		if err := d.restart(); err != nil { // bytes of another file or revision
			return err
		}
	}

	sum, err := d.fetch(ctx)
	if err != nil {
		return err
	}
	return d.finish(sum)
}

// restart empties the partial file.
func (d *download) restart() error {
	if err := d.file.Truncate(0); err != nil {
		return failedErrorf("reset partial file: %w", err)
	}
	if _, err := d.file.Seek(0, io.SeekStart); err != nil {
		return failedErrorf("reset partial file: %w", err)
	}
	d.meta = partialMeta{Source: d.ref.String(), Revision: d.opts.revision}
	return nil
}

// fetch gets the bytes the partial file lacks and returns the sha256 of
// the whole file, checked against the published one.
func (d *download) fetch(ctx context.Context) (string, error) {
	for attempt := 0; ; attempt++ {
		offset, err := d.file.Seek(0, io.SeekEnd)
		if err != nil {
			return "", failedErrorf("read partial file: %w", err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(d.file, 0, offset)); err != nil {
			return "", failedErrorf("hash partial file: %w", err)
		}

		err = d.get(ctx, offset, h)
		if errors.Is(err, errUpstreamChanged) && attempt == 0 {
			d.opts.app.log.Warn("the file changed upstream; starting the partial over",
				"model", d.name)
			if err := d.restart(); err != nil {
				return "", err
			}
			continue
		}
		if err != nil {
			return "", err
		}

		sum := hex.EncodeToString(h.Sum(nil))
		if d.meta.SHA256 != "" && sum != d.meta.SHA256 {
			d.discard()
			return "", failedErrorf("sha256 mismatch for %s: got %s, Hugging Face publishes %s; "+
				"the partial file was removed, run the command again", d.ref, sum, d.meta.SHA256)
		}
		if d.meta.SHA256 == "" {
			d.opts.app.log.Warn("Hugging Face published no sha256 for this file (not an LFS "+
				"file?); it is not verified", "model", d.name)
		}
		return sum, nil
	}
}

// errUpstreamChanged: the published hash differs from the one the partial
// file's bytes were fetched for.
var errUpstreamChanged = errors.New("the file changed upstream")

// get does one request for the bytes from offset on, appending them to the
// partial file and to h.
func (d *download) get(ctx context.Context, offset int64, h hash.Hash) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(d.opts.stallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()

	resp, linked, err := d.request(ctx, offset)
	if err != nil {
		return d.netError(ctx, err, offset)
	}
	defer resp.Body.Close()

	if linked.sha != "" && d.meta.SHA256 != "" && linked.sha != d.meta.SHA256 && offset > 0 {
		return errUpstreamChanged
	}
	if linked.sha != "" && d.meta.SHA256 != linked.sha {
		d.meta.SHA256 = linked.sha
	}
	if err := d.saveMeta(); err != nil {
		return err
	}

	total := linked.size
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			return failedErrorf("download %s: the server answered a range from byte %d with %q",
				d.ref, offset, resp.Header.Get("Content-Range"))
		}
		total = size
	case http.StatusOK:
		if offset > 0 { // the server ignored the range: take it from the top
			if err := d.restart(); err != nil {
				return err
			}
			d.meta.SHA256 = linked.sha
			offset = 0
			h.Reset()
		}
		if resp.ContentLength >= 0 {
			total = resp.ContentLength
		}
	case http.StatusRequestedRangeNotSatisfiable:
		_, size, _ := parseContentRange(resp.Header.Get("Content-Range"))
		if size == offset || linked.size == offset {
			return nil // the partial file is whole already
		}
		return d.restartAfter(ctx, "the partial file is longer than the file upstream", h)
	default:
		return httpError(d.ref, d.opts.revision, resp.StatusCode)
	}

	d.opts.app.log.Info("downloading", "model", d.name, "from", offset, "total", total)
	return d.copy(ctx, resp.Body, offset, total, h, stall)
}

// restartAfter empties the partial file and fetches the whole file again.
func (d *download) restartAfter(ctx context.Context, why string, h hash.Hash) error {
	d.opts.app.log.Warn("starting the partial over", "model", d.name, "why", why)
	if err := d.restart(); err != nil {
		return err
	}
	h.Reset()
	return d.get(ctx, 0, h)
}

// linkedFile is what Hugging Face says of an LFS file in its resolve
// response: the sha256 (X-Linked-Etag) and size (X-Linked-Size).
type linkedFile struct {
	sha  string
	size int64
}

// request sends the GET for the bytes from offset on, following redirects
// to the CDN, and returns the response and the linked file's hash, read
// from the first response that carries one.
func (d *download) request(ctx context.Context, offset int64) (*http.Response, linkedFile, error) {
	u := fmt.Sprintf("%s/%s/resolve/%s/%s", d.opts.endpoint, d.ref.repo, d.opts.revision,
		d.ref.file)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, linkedFile{}, failedErrorf("download %s: %w", d.ref, err)
	}
	if d.opts.token != "" {
		// net/http drops it on a redirect to another host (the CDN).
		req.Header.Set("Authorization", "Bearer "+d.opts.token)
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}

	var linked linkedFile
	client := &http.Client{CheckRedirect: func(next *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("too many redirects")
		}
		if linked.sha == "" {
			linked = readLinked(next.Response.Header)
		}
		return nil
	}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, linkedFile{}, err
	}
	if linked.sha == "" {
		linked = readLinked(resp.Header)
	}
	return resp, linked, nil
}

// readLinked reads the LFS hash Hugging Face publishes: X-Linked-Etag,
// else ETag when it is a sha256 (a file served without a redirect).
func readLinked(hdr http.Header) linkedFile {
	var l linkedFile
	for _, v := range []string{hdr.Get("X-Linked-Etag"), hdr.Get("ETag")} {
		v = strings.Trim(strings.TrimPrefix(v, "W/"), `"`)
		if len(v) == 64 && isHex(v) {
			l.sha = strings.ToLower(v)
			break
		}
	}
	l.size, _ = strconv.ParseInt(hdr.Get("X-Linked-Size"), 10, 64)
	return l
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// parseContentRange reads "bytes START-END/SIZE" or "bytes */SIZE".
func parseContentRange(v string) (start, size int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, sz, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	size, err := strconv.ParseInt(sz, 10, 64)
	if err != nil {
		size = 0
	}
	if rng == "*" {
		return 0, size, true
	}
	first, _, found := strings.Cut(rng, "-")
	start, err = strconv.ParseInt(first, 10, 64)
	return start, size, found && err == nil
}

// httpError says what a refused resolve request means for the person.
func httpError(ref hfRef, revision string, status int) error {
	switch status {
	case http.StatusUnauthorized:
		return usageErrorf("download %s: private or gated: set HF_TOKEN (or pass "+
			"--hf-token-file) to a token that can read it (401)", ref)
	case http.StatusForbidden:
		return usageErrorf("download %s: access refused: the model is gated; accept its "+
			"terms on Hugging Face with the account of HF_TOKEN (403)", ref)
	case http.StatusNotFound:
		return notFoundErrorf("download %s: no such file at revision %q (404)", ref, revision)
	}
	return failedErrorf("download %s: Hugging Face answered %d %s", ref, status,
		http.StatusText(status))
}

// netError turns a failed request into the error to report.
func (d *download) netError(ctx context.Context, err error, offset int64) error {
	if errors.Is(context.Cause(ctx), errStalled) {
		return d.stalledError(offset)
	}
	return failedErrorf("download %s: %w; the partial file keeps %d bytes, "+
		"run the command again to resume", d.ref, err, offset)
}

func (d *download) stalledError(have int64) error {
	return failedErrorf("download %s stalled: no bytes for %s; the partial file keeps %d bytes, "+
		"run the command again to resume", d.ref, d.opts.stallTimeout, have)
}

// copy appends body to the partial file and h, printing progress lines,
// and aborts when no byte arrives for the stall timeout.
func (d *download) copy(ctx context.Context, body io.Reader, offset, total int64,
	h hash.Hash, stall *time.Timer) error {
	var w io.Writer = d.file
	if d.opts.wrapWriter != nil {
		w = d.opts.wrapWriter(w)
	}
	start := time.Now()
	have := offset
	lastReport := time.Time{}
	report := func(force bool) error {
		now := time.Now()
		if !force && now.Sub(lastReport) < d.opts.progress {
			return nil
		}
		lastReport = now
		ev := api.ModelEvent{Event: "progress", Bytes: have, Total: total, Resumed: offset}
		if secs := now.Sub(start).Seconds(); secs > 0 {
			ev.Rate = float64(have-offset) / secs
		}
		return d.opts.app.printResult(ev)
	}
	if err := report(true); err != nil {
		return err
	}

	buf := make([]byte, 256*1024)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			stall.Reset(d.opts.stallTimeout)
			if _, err := w.Write(buf[:n]); err != nil {
				return failedErrorf("write %s: %w; the partial file keeps %d bytes, "+
					"run the command again to resume", d.cat.partialPath(d.name), diskFull(err), have)
			}
			h.Write(buf[:n])
			have += int64(n)
			if err := report(false); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			if errors.Is(context.Cause(ctx), errStalled) {
				return d.stalledError(have)
			}
			return failedErrorf("download %s: %w; the partial file keeps %d bytes, "+
				"run the command again to resume", d.ref, rerr, have)
		}
	}
	if total > 0 && have != total {
		return failedErrorf("download %s: got %d of %d bytes; run the command again to resume",
			d.ref, have, total)
	}
	if err := d.file.Sync(); err != nil {
		return failedErrorf("write %s: %w", d.cat.partialPath(d.name), diskFull(err))
	}
	return report(true)
}

// diskFull makes a full disk say so.
func diskFull(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("disk full (%w): free some space", err)
	}
	return err
}

func (d *download) saveMeta() error {
	data, err := json.Marshal(d.meta)
	if err == nil {
		err = os.WriteFile(d.metaPath(), data, 0o644)
	}
	if err != nil {
		return failedErrorf("write partial file's record: %w", diskFull(err))
	}
	return nil
}

// discard removes the partial file and its record.
func (d *download) discard() {
	for _, p := range []string{d.cat.partialPath(d.name), d.metaPath()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.opts.app.log.Warn("cannot remove partial file", "path", p, "error", err)
		}
	}
}

// finish reads the verified file's GGUF header and moves it into the
// catalog with its manifest.
func (d *download) finish(sum string) error {
	partial := d.cat.partialPath(d.name)
	fi, err := d.file.Stat()
	if err != nil {
		return failedErrorf("read partial file: %w", err)
	}
	m := api.Model{
		Name: d.name, File: path.Base(d.ref.file), Source: d.ref.String(),
		Revision: d.opts.revision, Size: fi.Size(), SHA256: sum, AddedAt: time.Now().UTC(),
	}
	if checkModelName(m.File) != nil {
		m.File = d.name + ".gguf"
	}
	if err := describeGGUF(partial, &m); err != nil {
		d.discard()
		return err
	}
	installed, err := d.cat.install(partial, false, m)
	if err != nil {
		return err
	}
	if err := os.Remove(d.metaPath()); err != nil {
		d.opts.app.log.Warn("cannot remove partial file's record", "error", err)
	}
	d.opts.app.log.Info("model downloaded", "model", d.name, "size", m.Size)
	return d.opts.app.printResult(installed)
}
