package keeper

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// isTerminal reports whether w is a character device such as a terminal.
// Writers that are not files (buffers in tests, pipes wrapped in Go) are not.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes rows for a person or for a script. On a terminal it has a
// header and padded columns; elsewhere it is plain tab-separated rows
// without a header, so that `cut -f` and `while read` stay simple.
type table struct {
	tw     *tabwriter.Writer // nil in the plain form
	w      io.Writer
	header []string
	rows   int
}

func newTable(w io.Writer, tty bool, header ...string) *table {
	t := &table{w: w, header: header}
	if tty {
		t.tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		t.w = t.tw
	}
	return t
}

// row adds one row; cells must not hold tabs or newlines.
func (t *table) row(cells ...string) {
	if t.rows == 0 && t.tw != nil {
		fmt.Fprintln(t.w, strings.Join(t.header, "\t"))
	}
	t.rows++
	fmt.Fprintln(t.w, strings.Join(cells, "\t"))
}

// flush writes out the padded form; the plain form is already written.
func (t *table) flush() error {
	if t.tw == nil {
		return nil
	}
	return t.tw.Flush()
}

// formatAge says how long before now t was, like "1.2s ago" or "3m ago";
// "-" for a zero time.
func formatAge(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%.1fs ago", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
	}
}

// orDash returns s, or "-" when s is empty, so that no table cell is blank.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
