package httpapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// SSEWriter writes Server-Sent Events, flushing each one so a token reaches
// the client the moment it exists.
type SSEWriter struct {
	w       http.ResponseWriter
	flusher http.Flusher
	started bool
}

// NewSSEWriter prepares w for an event stream.
func NewSSEWriter(w http.ResponseWriter) *SSEWriter {
	flusher, _ := w.(http.Flusher)
	return &SSEWriter{w: w, flusher: flusher}
}

// Started reports whether any event was written (after which an error can
// only be sent as an event, not as a status code).
func (s *SSEWriter) Started() bool { return s.started }

// Event writes v as one `data:` event.
func (s *SSEWriter) Event(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	return s.Raw(data)
}

// Raw writes data, which must be one line, as one `data:` event.
func (s *SSEWriter) Raw(data []byte) error {
	if !s.started {
		h := s.w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
	if _, err := fmt.Fprintf(s.w, "data: %s\n\n", data); err != nil {
		return fmt.Errorf("write event: %w", err)
	}
	if s.flusher != nil {
		s.flusher.Flush()
	}
	return nil
}

// Done ends the stream the way OpenAI does.
func (s *SSEWriter) Done() error { return s.Raw([]byte("[DONE]")) }

// SSEReader reads the `data:` payloads of an event stream, following the
// SSE rules rbee's peers rely on: an event ends at a blank line, several
// data lines of one event are joined with newlines, other fields (event,
// id, comments) are skipped, and an event cut off by the end of the body
// is dropped.
type SSEReader struct {
	scanner *bufio.Scanner
	data    []byte
}

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader {
	scanner := bufio.NewScanner(r)
	// Start small (a token event is a few dozen bytes): the queen makes one
	// reader per request, and the buffer grows when an event needs it.
	scanner.Buffer(make([]byte, 4<<10), MaxBodyBytes)
	return &SSEReader{scanner: scanner}
}

// Next returns the next event's data, valid until the next call. done is
// true at `[DONE]`; io.EOF means the stream ended without it.
func (s *SSEReader) Next() (data []byte, done bool, err error) {
	s.data = s.data[:0]
	hasData := false
	for s.scanner.Scan() {
		line := s.scanner.Bytes() // ScanLines already drops a trailing \r
		if len(line) == 0 {
			if !hasData {
				continue
			}
			if bytes.Equal(s.data, []byte("[DONE]")) {
				return nil, true, nil
			}
			return s.data, false, nil
		}
		payload, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		if hasData {
			s.data = append(s.data, '\n')
		}
		s.data = append(s.data, bytes.TrimPrefix(payload, []byte(" "))...)
		hasData = true
	}
	if err := s.scanner.Err(); err != nil {
		return nil, false, fmt.Errorf("read event stream: %w", err)
	}
	return nil, false, io.EOF
}
