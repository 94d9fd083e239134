package keeper

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api"
)

func newKeyCmd(root *rootOptions) *cobra.Command {
	return groupCmd("key", "Create, list and remove the queen's API keys",
		newKeyCreateCmd(root),
		newKeyListCmd(root),
		newKeyRmCmd(root),
	)
}

type keyCreateOptions struct {
	root *rootOptions

	Name  string
	Scope string
	JSON  bool
}

func newKeyCreateCmd(root *rootOptions) *cobra.Command {
	opts := &keyCreateOptions{root: root}
	cmd := &cobra.Command{
		Use:   "create --name NAME",
		Short: "Create an API key and print it, once",
		Long: "Create an API key and print it on stdout. The queen keeps only its hash:\n" +
			"the key cannot be shown again. An inference key reaches completions, chat,\n" +
			"embeddings and models; an admin key reaches everything.\n\n" +
			"While the queen has no key, it trusts every client on its own machine:\n" +
			"create the first key there, with --scope admin. Once a key exists, every\n" +
			"request needs one, and creating keys needs an admin key in $" + envAPIKey + ".",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			return runKeyCreate(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Name, "name", "", "name of the key: letters, digits, '_', '.', '-' (required)")
	f.StringVar(&opts.Scope, "scope", string(api.KeyScopeInference), "inference or admin")
	f.BoolVar(&opts.JSON, "json", false, "print the key and its details as JSON")
	return cmd
}

func (o *keyCreateOptions) validate() error {
	switch {
	case o.Name == "":
		return usageErrorf("--name is required: what the key is for, e.g. laptop")
	case o.Scope != string(api.KeyScopeInference) && o.Scope != string(api.KeyScopeAdmin):
		return usageErrorf("--scope must be inference or admin, not %q", o.Scope)
	}
	return nil
}

func runKeyCreate(ctx context.Context, opts *keyCreateOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	req := api.KeyRequest{Name: opts.Name, Scope: api.KeyScope(opts.Scope)}
	var k api.CreatedKey
	if err := c.do(ctx, http.MethodPost, "/v1/keys", req, &k); err != nil {
		return err
	}

	if opts.JSON {
		err = writeJSON(opts.root.Stdout, k)
	} else {
		_, err = fmt.Fprintln(opts.root.Stdout, k.Key)
	}
	if err != nil {
		return err
	}
	// The key is on the terminal already when stdout is one; elsewhere it
	// went to a file or a program, and stays out of stderr.
	shown := "<the key on stdout>"
	if opts.root.StdoutTTY && !opts.JSON {
		shown = k.Key
	}
	fmt.Fprintf(opts.root.Stderr, "rbee: created %s key %q. It is shown only this once: "+
		"store it now, e.g.\n  export %s=%s\n", k.Scope, k.Name, envAPIKey, shown)
	return nil
}

type keyListOptions struct {
	root *rootOptions

	JSON bool
}

func newKeyListCmd(root *rootOptions) *cobra.Command {
	opts := &keyListOptions{root: root}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List API keys (never the keys themselves)",
		Long: "List the queen's API keys: name, scope, the start of the key, when it was\n" +
			"created and last used. When stdout is not a terminal, rows are\n" +
			"tab-separated, without a header.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runKeyList(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print JSON")
	return cmd
}

func runKeyList(ctx context.Context, opts *keyListOptions) error {
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var list api.APIKeyList
	if err := c.do(ctx, http.MethodGet, "/v1/keys", nil, &list); err != nil {
		return err
	}
	if list.Keys == nil {
		list.Keys = []api.APIKey{}
	}

	if opts.JSON {
		return writeJSON(opts.root.Stdout, list)
	}
	if len(list.Keys) == 0 && opts.root.StdoutTTY {
		fmt.Fprintln(opts.root.Stderr, "rbee: no API keys: the queen trusts every client on "+
			"its machine; create the first with `rbee key create --name admin --scope admin`")
		return nil
	}
	t := newTable(opts.root.Stdout, opts.root.StdoutTTY,
		"NAME", "SCOPE", "PREFIX", "CREATED", "LAST USED")
	now := opts.root.Now()
	for _, k := range list.Keys {
		t.row(k.Name, string(k.Scope), k.Prefix+"...", formatAge(now, k.CreatedAt),
			formatAge(now, k.LastUsedAt))
	}
	return t.flush()
}

type keyRmOptions struct {
	root *rootOptions

	Name string
	JSON bool
}

func newKeyRmCmd(root *rootOptions) *cobra.Command {
	opts := &keyRmOptions{root: root}
	cmd := &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"remove"},
		Short:   "Remove an API key: requests with it fail from then on",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runKeyRm(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the removed key as JSON")
	return cmd
}

func runKeyRm(ctx context.Context, opts *keyRmOptions) error {
	if opts.Name == "" {
		return usageErrorf("a key NAME is required")
	}
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	var k api.APIKey
	err = c.do(ctx, http.MethodDelete, "/v1/keys/"+url.PathEscape(opts.Name), nil, &k)
	if err != nil {
		return err
	}
	if opts.JSON {
		return writeJSON(opts.root.Stdout, k)
	}
	_, err = fmt.Fprintf(opts.root.Stdout, "removed key %s\n", opts.Name)
	return err
}
