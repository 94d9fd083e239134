package hive

import (
	"context"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/version"
)

type versionOptions struct {
	app *app
}

func newVersionCmd(a *app) *cobra.Command {
	opts := &versionOptions{app: a}
	return &cobra.Command{
		Use:   "version",
		Short: "Print the hive's version and protocol version",
		Args:  cobra.NoArgs,
		RunE: runE(func(ctx context.Context, _ []string) error {
			return runVersion(ctx, opts)
		}),
	}
}

func runVersion(_ context.Context, opts *versionOptions) error {
	return opts.app.printResult(api.HiveVersion{
		Version:         version.Version,
		ProtocolVersion: api.ProtocolVersion,
		OS:              runtime.GOOS,
		Arch:            runtime.GOARCH,
	})
}
