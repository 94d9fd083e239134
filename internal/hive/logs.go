package hive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

// logPoll is how often `worker logs --follow` looks for appended bytes.
// Polling the size needs no inotify, and works the same on every OS.
const logPoll = 100 * time.Millisecond

// tailBlock is how much of the log is read at a time when looking for the
// start of the last lines.
const tailBlock = 64 << 10

type logsOptions struct {
	app    *app
	Follow bool
	Tail   int
}

func newLogsCmd(a *app) *cobra.Command {
	opts := &logsOptions{app: a}
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a worker's log, and with --follow the lines it appends",
		Long: "Print one JSON line (api.HiveLogHeader), then the worker's log verbatim.\n" +
			"With --follow, keep printing appended lines until killed, or until the\n" +
			"worker's record is gone and its log stops growing.",
		Args: cobra.ExactArgs(1),
		RunE: runE(func(ctx context.Context, args []string) error {
			return runLogs(ctx, opts, args[0])
		}),
	}
	cmd.Flags().BoolVarP(&opts.Follow, "follow", "f", false, "keep printing appended lines")
	cmd.Flags().IntVar(&opts.Tail, "tail", -1, "print only the last N lines first (-1: all)")
	return cmd
}

func runLogs(ctx context.Context, opts *logsOptions, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	st, err := openStore(false)
	if err != nil {
		return err
	}
	f, err := os.Open(st.logPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return notFoundErrorf("worker %q has no log on this hive", id)
	}
	if err != nil {
		return fmt.Errorf("open worker log: %w", err)
	}
	defer f.Close()

	if err := opts.app.printResult(api.HiveLogHeader{WorkerID: id, LogPath: st.logPath(id)}); err != nil {
		return err
	}
	gone := func() bool {
		_, err := st.read(id)
		return errors.Is(err, errNoRecord)
	}
	if !opts.Follow {
		gone = nil
	}
	return copyLog(ctx, f, opts.app.stdout, opts.Tail, gone, logPoll)
}

// copyLog writes the last tail lines of f (all when tail < 0) to out. When
// gone is set it then follows f, polling every poll, until ctx ends or a
// poll finds nothing new and gone reports true. A file that shrank was
// truncated or replaced: it is read again from its start.
func copyLog(ctx context.Context, f *os.File, out io.Writer, tail int, gone func() bool,
	poll time.Duration) error {
	if tail >= 0 {
		start, err := tailStart(f, tail)
		if err != nil {
			return err
		}
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("read worker log: %w", err)
		}
	}
	offset, err := drain(f, out)
	if err != nil || gone == nil {
		return err
	}

	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil // killed: the caller went away
		case <-t.C:
		}
		if fi, err := f.Stat(); err == nil && fi.Size() < offset {
			if offset, err = f.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("read worker log: %w", err)
			}
		}
		n, err := drain(f, out)
		if err != nil {
			return err
		}
		offset += n
		if n == 0 && gone() {
			return nil
		}
	}
}

// drain copies f from its offset to its end into out and returns how many
// bytes it copied; a line still being written goes out in pieces.
func drain(f *os.File, out io.Writer) (int64, error) {
	n, err := io.Copy(out, f)
	if err != nil {
		return n, fmt.Errorf("copy worker log: %w", err)
	}
	return n, nil
}

// tailStart returns the offset of the first of the last n lines of f. A
// last line without a newline counts as a line.
func tailStart(f *os.File, n int) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("read worker log: %w", err)
	}
	end := fi.Size()
	if n == 0 {
		return end, nil
	}

	buf := make([]byte, tailBlock)
	pos, seen := end, 0
	for pos > 0 {
		size := min(int64(tailBlock), pos)
		pos -= size
		chunk := buf[:size]
		if _, err := f.ReadAt(chunk, pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("read worker log: %w", err)
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] != '\n' || pos+int64(i) == end-1 {
				continue // the newline that ends the file ends the last line
			}
			seen++
			if seen == n {
				return pos + int64(i) + 1, nil
			}
		}
	}
	return 0, nil
}
