package keeper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// client talks to the queen's HTTP API (docs/contracts.md).
type client struct {
	base   string // the queen's base URL, no trailing slash
	apiKey string // sent as a bearer token when set
	http   *http.Client
	log    *slog.Logger
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// do sends in (when not nil) as JSON and decodes a 2xx answer into out
// (when not nil). An error answer becomes an *apiError.
func (c *client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in, false)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading the queen's answer to %s %s: %w", method, path, err)
	}
	return nil
}

// health reports nil when the queen answers GET /health with 200. Each
// check dials anew, so that a queen that went away is seen at once.
func (c *client) health(ctx context.Context) error {
	resp, err := c.send(ctx, http.MethodGet, "/health", nil, true)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// send makes one request and returns a 2xx response with its body open.
// A queen that cannot be reached becomes a *queenDownError, an error
// answer an *apiError.
func (c *client) send(ctx context.Context, method, path string, in any,
	fresh bool) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encoding the request to %s: %w", path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("building the request to %s: %w", path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	req.Close = fresh

	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.log.Debug("request failed", "method", method, "path", path, "error", err)
		return nil, c.transportError(err)
	}
	c.log.Debug("request", "method", method, "path", path, "status", resp.StatusCode,
		"duration", time.Since(start))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}

	defer resp.Body.Close()
	return nil, c.errorAnswer(method, path, resp)
}

// transportError names a queen that does not answer; other failures (a
// cancelled context, a dropped connection) keep their own cause.
func (c *client) transportError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return &queenDownError{url: c.base, err: err}
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the queen at %s did not answer in time: %w", c.base, err)
	}
	return fmt.Errorf("talking to the queen at %s: %w", c.base, err)
}

// errorAnswer turns a non-2xx answer into an *apiError, keeping a short
// piece of the body when it is not in api.ErrorBody's shape.
func (c *client) errorAnswer(method, path string, resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &apiError{status: resp.StatusCode}

	var body api.ErrorBody
	if json.Unmarshal(raw, &body) == nil && body.Error.Message != "" {
		e.detail = body.Error
	} else if text := strings.TrimSpace(string(raw)); text != "" {
		e.detail.Message = fmt.Sprintf("the queen answered %d %s: %s", resp.StatusCode,
			http.StatusText(resp.StatusCode), truncate(text, 200))
	}
	c.log.Debug("queen error", "method", method, "path", path, "status", resp.StatusCode,
		"type", e.detail.Type, "code", e.detail.Code, "error", e.Error())
	return e
}

// truncate shortens s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
