// Package httpapi is the one place where rbee's HTTP servers (the queen and
// the worker) turn results and errors into responses. Handlers return an
// error; Handle writes it in OpenAI's error shape with the right status,
// so no handler maps errors to status codes on its own.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/rbee-dev/rbee/internal/api"
)

// Error is an error that knows how it should look on the wire. Message is
// shown to the client; wrap internal detail in Err, which is only logged.
type Error struct {
	Status     int
	Type       string // OpenAI error type, e.g. "invalid_request_error"
	Code       string
	Param      string
	Message    string
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// BadRequest is a 400 that names the offending field.
func BadRequest(param, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "invalid_request_error",
		Param: param, Message: fmt.Sprintf(format, args...)}
}

// NotFound is a 404.
func NotFound(code, format string, args ...any) *Error {
	return &Error{Status: http.StatusNotFound, Type: "invalid_request_error",
		Code: code, Message: fmt.Sprintf(format, args...)}
}

// Unauthorized is a 401.
func Unauthorized(format string, args ...any) *Error {
	return &Error{Status: http.StatusUnauthorized, Type: "authentication_error",
		Code: "invalid_api_key", Message: fmt.Sprintf(format, args...)}
}

// Unavailable is a 503 with a Retry-After hint.
func Unavailable(retryAfter time.Duration, format string, args ...any) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: "server_error",
		Code: "unavailable", RetryAfter: retryAfter, Message: fmt.Sprintf(format, args...)}
}

// Upstream is a 502: something rbee called failed; err is logged, not shown.
func Upstream(err error, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadGateway, Type: "server_error",
		Code: "upstream_error", Message: fmt.Sprintf(format, args...), Err: err}
}

// HandlerFunc is an HTTP handler that returns its error instead of writing it.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts h: an error it returns becomes an OpenAI-shaped error
// response, logged at debug for 4xx and at error for 5xx.
func Handle(log *slog.Logger, h HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err == nil {
			return
		}
		apiErr := AsError(err)
		level := slog.LevelDebug
		if apiErr.Status >= 500 {
			level = slog.LevelError
		}
		log.Log(r.Context(), level, "request failed", "method", r.Method, "path", r.URL.Path,
			"status", apiErr.Status, "error", err)
		WriteError(w, apiErr)
	}
}

// AsError returns err as an *Error, making an opaque 500 of anything else so
// internal detail never reaches the client.
func AsError(err error) *Error {
	var apiErr *Error
	if errors.As(err, &apiErr) {
		return apiErr
	}
	return &Error{Status: http.StatusInternalServerError, Type: "server_error",
		Code: "internal_error", Message: "internal error", Err: err}
}

// WriteError writes e as an OpenAI error body.
func WriteError(w http.ResponseWriter, e *Error) {
	if e.RetryAfter > 0 {
		secs := int(e.RetryAfter.Round(time.Second) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	}
	WriteJSON(w, e.Status, Body(e))
}

// Body is the wire form of e.
func Body(e *Error) api.ErrorBody {
	return api.ErrorBody{Error: api.ErrorDetail{
		Message: e.Message, Type: e.Type, Code: e.Code, Param: e.Param,
	}}
}

// WriteJSON writes v as a JSON response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// MaxBodyBytes bounds every request body rbee reads.
const MaxBodyBytes = 8 << 20

// DecodeJSON reads a JSON request body into v, with a bounded size, and
// turns every failure into a 400 that says what is wrong.
func DecodeJSON(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.Is(err, io.EOF):
			return BadRequest("", "request body is empty: send a JSON object")
		case errors.As(err, &tooBig):
			return BadRequest("", "request body is over %d bytes", MaxBodyBytes)
		case errors.As(err, &typeErr):
			return BadRequest(typeErr.Field, "field %q must be %s, not %s",
				typeErr.Field, typeErr.Type, typeErr.Value)
		default:
			return BadRequest("", "request body is not valid JSON: %v", err)
		}
	}
	// Token, unlike More, also sees a stray '}' or ']' after the value.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return BadRequest("", "request body has data after the JSON value")
	}
	return nil
}
