package keeper

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

func newHiveCmd(root *rootOptions) *cobra.Command {
	return groupCmd("hive", "Add, install, check and remove hives (machines reached over SSH)",
		newHiveAddCmd(root),
		newHiveListCmd(root),
		newHiveInstallCmd(root),
		newHiveCheckCmd(root),
		newHiveDrainCmd(root),
		newHiveGCCmd(root),
		newHiveUninstallCmd(root),
		newHiveRmCmd(root),
		newHiveDevicesCmd(root),
	)
}

type hiveAddOptions struct {
	root *rootOptions

	Name             string
	SSH              string
	SSHAlias         string
	KeyPath          string
	AcceptNewHostKey bool
	JSON             bool
}

func newHiveAddCmd(root *rootOptions) *cobra.Command {
	opts := &hiveAddOptions{root: root}
	cmd := &cobra.Command{
		Use:   "add NAME --ssh USER@HOST[:PORT] | --ssh-alias ALIAS",
		Short: "Record a hive the queen reaches over SSH",
		Long: "Record a hive. The queen connects to it at once: a host whose key is in no\n" +
			"known_hosts file is refused unless --accept-new-host-key is given. With\n" +
			"--ssh-alias, host, user, port and key come from the queen's ~/.ssh/config.\n" +
			"Then run `rbee hive install NAME`.",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if (opts.SSH == "") == (opts.SSHAlias == "") {
				return usageErrorf("give one of --ssh USER@HOST[:PORT] and --ssh-alias ALIAS")
			}
			return runHiveAdd(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.SSH, "ssh", "", "USER@HOST[:PORT] to connect to")
	f.StringVar(&opts.SSHAlias, "ssh-alias", "", "a Host of the queen's ~/.ssh/config")
	f.StringVarP(&opts.KeyPath, "identity", "i", "", "private key file on the queen's machine")
	f.BoolVar(&opts.AcceptNewHostKey, "accept-new-host-key", false,
		"trust the host's key when it is seen for the first time")
	f.BoolVar(&opts.JSON, "json", false, "print the hive as JSON")
	return cmd
}

func runHiveAdd(ctx context.Context, opts *hiveAddOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	req := api.HiveAddRequest{Name: opts.Name, SSH: opts.SSH, SSHAlias: opts.SSHAlias,
		KeyPath: absIfExists(opts.KeyPath), AcceptNewHostKey: opts.AcceptNewHostKey}
	var h api.Hive
	if err := c.do(ctx, http.MethodPost, "/v1/hives", req, &h); err != nil {
		return err
	}
	if opts.JSON {
		err = writeJSON(opts.root.Stdout, h)
	} else {
		err = printHives(opts.root, []api.Hive{h})
	}
	if err != nil {
		return err
	}
	switch {
	case !h.Reachable:
		fmt.Fprintf(opts.root.Stderr, "rbee: added hive %s, but it is not reachable now: %s\n",
			h.Name, h.LastError)
	case h.Version == "" || h.LastError != "":
		fmt.Fprintf(opts.root.Stderr, "rbee: added hive %s; next: `rbee hive install %s`\n",
			h.Name, h.Name)
	}
	return nil
}

// absIfExists makes a path of this machine absolute, for the queen, which
// runs here too (keys are files of the queen's machine); other paths are
// passed on as they are.
func absIfExists(path string) string {
	if path == "" {
		return ""
	}
	if _, err := os.Stat(path); err != nil {
		return path
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return path
	}
	return abs
}

type hiveListOptions struct {
	root *rootOptions
	JSON bool
}

func newHiveListCmd(root *rootOptions) *cobra.Command {
	opts := &hiveListOptions{root: root}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List hives: reachable, rbee-hive version, OS/arch, last contact",
		Long: "List the hives the queen knows, as of their last contact (`rbee hive check`\n" +
			"refreshes it). When stdout is not a terminal, rows are tab-separated,\n" +
			"without a header.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runHiveList(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print JSON")
	return cmd
}

func runHiveList(ctx context.Context, opts *hiveListOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var list api.HiveList
	if err := c.do(ctx, http.MethodGet, "/v1/hives", nil, &list); err != nil {
		return err
	}
	if list.Hives == nil {
		list.Hives = []api.Hive{}
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, list)
	}
	return printHives(opts.root, list.Hives)
}

// printHives writes hives as a table on stdout.
func printHives(root *rootOptions, hives []api.Hive) error {
	t := newTable(root.Stdout, root.StdoutTTY,
		"NAME", "HOST", "REACHABLE", "VERSION", "OS/ARCH", "LAST CONTACT", "ERROR")
	now := root.Now()
	for _, h := range hives {
		host := h.Host
		if !h.Local {
			host = h.User + "@" + h.Host + ":" + strconv.Itoa(h.Port)
			if h.User == "" {
				host = h.Host + ":" + strconv.Itoa(h.Port)
			}
		}
		reachable, contact, osArch := "-", "-", "-"
		if h.CheckedAt != nil {
			reachable = map[bool]string{true: "yes", false: "no"}[h.Reachable]
			contact = formatAge(now, *h.CheckedAt)
		}
		if h.OS != "" {
			osArch = h.OS + "/" + h.Arch
		}
		t.row(h.Name, host, reachable, orDash(h.Version), osArch, contact, orDash(h.LastError))
	}
	return t.flush()
}

// hiveActionOptions serve the commands that act on one hive by name.
type hiveActionOptions struct {
	root  *rootOptions
	Name  string
	Force bool
	JSON  bool
}

func newHiveInstallCmd(root *rootOptions) *cobra.Command {
	opts := &hiveActionOptions{root: root}
	cmd := &cobra.Command{
		Use:   "install NAME",
		Short: "Copy rbee-hive and llm-worker-rbee to the hive's ~/.local/bin",
		Long: "Copy rbee-hive and llm-worker-rbee (and GPU backends, when the queen has\n" +
			"them) to ~/.local/bin on the hive over SSH, each verified by sha256 and\n" +
			"renamed into place; files the hive already has are skipped. The hive's\n" +
			"architecture (`uname -m`) must match the binaries'.",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runHiveInstall(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the result as JSON")
	return cmd
}

func runHiveInstall(ctx context.Context, opts *hiveActionOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	fmt.Fprintf(opts.root.Stderr, "rbee: installing on hive %s...\n", opts.Name)
	var res api.HiveInstallResult
	if err := c.do(ctx, http.MethodPost, hivePath(opts.Name, "/install"), nil, &res); err != nil {
		return err
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, res)
	}
	t := newTable(opts.root.Stdout, opts.root.StdoutTTY, "PATH", "ACTION", "SIZE", "SHA256")
	for _, f := range res.Files {
		t.row(f.Path, f.Action, strconv.FormatInt(f.Size, 10), f.SHA256)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(opts.root.Stderr, "rbee: hive %s runs rbee-hive %s on %s/%s\n",
		res.Hive.Name, res.Hive.Version, res.Hive.OS, res.Hive.Arch)
	return nil
}

func newHiveCheckCmd(root *rootOptions) *cobra.Command {
	opts := &hiveActionOptions{root: root}
	cmd := &cobra.Command{
		Use:   "check NAME",
		Short: "Connect to a hive, run `rbee-hive version`, and show what it reports",
		Long: "Connect to a hive and run `rbee-hive version`: reachable, version, OS and\n" +
			"architecture. Its GPUs, CPU and memory: `rbee hive devices NAME`.\n" +
			"Exits 1 when the hive is unreachable or its rbee-hive is missing or too old.",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runHiveCheck(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the hive as JSON")
	return cmd
}

func runHiveCheck(ctx context.Context, opts *hiveActionOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var h api.Hive
	if err := c.do(ctx, http.MethodPost, hivePath(opts.Name, "/check"), nil, &h); err != nil {
		return err
	}
	if opts.JSON {
		err = writeJSON(opts.root.Stdout, h)
	} else {
		err = printHives(opts.root, []api.Hive{h})
	}
	if err != nil {
		return err
	}
	switch {
	case !h.Reachable:
		return fmt.Errorf("hive %s is unreachable: %s", h.Name, h.LastError)
	case h.LastError != "":
		return errors.New(h.LastError)
	}
	fmt.Fprintf(opts.root.Stderr, "rbee: devices: `rbee hive devices %s`\n", h.Name)
	return nil
}

func newHiveUninstallCmd(root *rootOptions) *cobra.Command {
	opts := &hiveActionOptions{root: root}
	cmd := &cobra.Command{
		Use:   "uninstall NAME",
		Short: "Remove rbee-hive and llm-worker-rbee from a hive",
		Long: "Remove what `rbee hive install` copied. Refused while workers run on the\n" +
			"hive, unless --force, which stops them first.",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runHiveUninstall(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "stop the hive's workers first")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the result as JSON")
	return cmd
}

func runHiveUninstall(ctx context.Context, opts *hiveActionOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var res api.HiveUninstallResult
	path := hivePath(opts.Name, "/uninstall") + forceQuery(opts.Force)
	if err := c.do(ctx, http.MethodPost, path, nil, &res); err != nil {
		return err
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, res)
	}
	for _, id := range res.Stopped {
		fmt.Fprintf(opts.root.Stderr, "rbee: stopped worker %s\n", id)
	}
	for _, p := range res.Removed {
		if _, err := fmt.Fprintf(opts.root.Stdout, "removed %s\n", p); err != nil {
			return err
		}
	}
	return nil
}

func newHiveRmCmd(root *rootOptions) *cobra.Command {
	opts := &hiveActionOptions{root: root}
	cmd := &cobra.Command{
		Use:   "rm NAME",
		Short: "Forget a hive",
		Long: "Forget a hive and its workers' records. Refused while workers that are not\n" +
			"stopped run there, unless --force (which leaves them running, unmanaged).",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runHiveRm(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "forget it even while workers run there")
	return cmd
}

func runHiveRm(ctx context.Context, opts *hiveActionOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	path := "/v1/hives/" + url.PathEscape(opts.Name) + forceQuery(opts.Force)
	if err := c.do(ctx, http.MethodDelete, path, nil, nil); err != nil {
		return err
	}
	_, err = fmt.Fprintf(opts.root.Stdout, "removed hive %s\n", opts.Name)
	return err
}

func hivePath(name, action string) string {
	return "/v1/hives/" + url.PathEscape(name) + action
}

func forceQuery(force bool) string {
	if force {
		return "?force=true"
	}
	return ""
}
