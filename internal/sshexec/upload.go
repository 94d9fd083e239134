package sshexec

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
)

// The upload scripts run as `sh -c SCRIPT rbee-upload DEST SUFFIX MODE`:
// the script text is a constant and every value is a positional
// parameter, so no path or mode is ever pasted into shell code.
const (
	// uploadPrelude resolves DEST (a leading ~/ means $HOME) and names the
	// temporary file beside it, so that the final rename is atomic.
	uploadPrelude = `set -eu
dest=$1
case $dest in "~/"*) dest=$HOME/${dest#"~/"} ;; esac
if [ -d "$dest" ]; then echo "$dest is a directory" >&2; exit 1; fi
dir=$(dirname -- "$dest")
tmp=$dir/.$(basename -- "$dest").$2
`
	// uploadWrite copies stdin to the temporary file, sets its mode, and
	// prints its sha256 as the remote side computed it (HASH stands for
	// the hashing command). A failed copy leaves no temporary file.
	uploadWrite = uploadPrelude + `mkdir -p -- "$dir"
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod "$3" "$tmp"
HASH
trap - EXIT
`
	uploadCommit = uploadPrelude + `mv -f -- "$tmp" "$dest"`
	uploadAbort  = uploadPrelude + `rm -f -- "$tmp"`

	// remoteSHA256 hashes "$tmp" with coreutils, or perl's shasum on a
	// system without them.
	remoteSHA256 = `if command -v sha256sum >/dev/null 2>&1; then sha256sum < "$tmp"; ` +
		`else shasum -a 256 < "$tmp"; fi`
)

// Upload copies size bytes from r to remotePath on t over the SSH
// connection itself (no scp or sftp needed there), with the given mode. It
// writes a temporary file beside remotePath, has the remote side compute
// its sha256, and renames it into place only when that matches what was
// sent, so remotePath is never seen half-written. A remotePath starting
// with ~/ is in the remote $HOME; another relative one is relative to the
// login directory. It returns the sha256 (hex) of the file; a mismatch is
// ErrChecksum. A negative size skips the length check.
func (p *Pool) Upload(ctx context.Context, t Target, r io.Reader, size int64,
	remotePath string, mode os.FileMode) (string, error) {
	if remotePath == "" {
		return "", errors.New("upload: empty remote path")
	}
	suffix, err := tempSuffix()
	if err != nil {
		return "", err
	}
	args := []string{remotePath, suffix, fmt.Sprintf("%o", mode.Perm())}
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("upload to %s:%s: %w", t, remotePath, err)
	}

	sum := sha256.New()
	counted := &countingReader{r: r, hash: sum}
	if size >= 0 {
		// One byte over size is enough to tell that r is too long.
		counted.r = io.LimitReader(r, size+1)
	}
	res, err := p.Run(ctx, t, script(p.writeScript(), args), counted)
	if err != nil {
		return fail(err)
	}
	if res.ExitCode != 0 {
		return fail(fmt.Errorf("write: exit %d: %s", res.ExitCode, bytes.TrimSpace(res.Stderr)))
	}

	want := hex.EncodeToString(sum.Sum(nil))
	got, _, _ := strings.Cut(strings.TrimSpace(string(res.Stdout)), " ")
	var problem error
	switch {
	case size >= 0 && counted.n != size:
		problem = fmt.Errorf("read %d bytes, expected %d; the file was not installed", counted.n, size)
	case got != want:
		problem = fmt.Errorf("%w: sent %s, the remote copy has %q; the file was not installed",
			ErrChecksum, want, got)
	}
	if problem != nil {
		if _, err := p.Run(ctx, t, script(uploadAbort, args), nil); err != nil {
			p.log.Warn("upload: temporary file left behind", "host", t.String(),
				"path", remotePath, "error", err)
		}
		return fail(problem)
	}

	res, err = p.Run(ctx, t, script(uploadCommit, args), nil)
	if err != nil {
		return fail(err)
	}
	if res.ExitCode != 0 {
		return fail(fmt.Errorf("rename: exit %d: %s", res.ExitCode, bytes.TrimSpace(res.Stderr)))
	}
	return want, nil
}

func (p *Pool) writeScript() string {
	return strings.Replace(uploadWrite, "HASH", p.remoteHash, 1)
}

// script is the argv that runs a constant shell script with args.
func script(body string, args []string) []string {
	return append([]string{"sh", "-c", body, "rbee-upload"}, args...)
}

// tempSuffix names one upload's temporary file.
func tempSuffix() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "rbee-upload-" + hex.EncodeToString(b), nil
}

// countingReader counts and hashes what is read through it.
type countingReader struct {
	r    io.Reader
	hash hash.Hash
	n    int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	c.hash.Write(b[:n])
	return n, err
}
