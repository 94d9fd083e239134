package workerd

import (
	"log/slog"
	"os"
	"testing"
)

// TestMain quiets llama.cpp, which logs through slog's default logger.
func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}
