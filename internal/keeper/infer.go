package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbee-dev/rbee/internal/api/openai"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// maxPromptBytes bounds a prompt read from stdin.
const maxPromptBytes = 16 << 20

type inferOptions struct {
	root *rootOptions

	Model       string
	MaxTokens   int
	Temperature float64
	TopP        float64
	TopK        int
	Seed        uint32
	Stop        []string
	NoStream    bool
	Args        []string // the prompt's words; none or "-": read stdin

	// Which sampling flags were given: only those are sent, so that the
	// queen's defaults hold for the rest.
	HasTemperature, HasTopP, HasTopK, HasSeed bool
}

func newInferCmd(root *rootOptions) *cobra.Command {
	opts := &inferOptions{root: root}
	cmd := &cobra.Command{
		Use:   "infer -m MODEL [flags] [PROMPT...]",
		Short: "Complete a prompt and stream the answer",
		Long: "Complete PROMPT (the arguments joined by spaces; none or \"-\": read stdin)\n" +
			"with a ready worker of MODEL. The text streams to stdout; a line of\n" +
			"statistics goes to stderr.",
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Args = args
			f := cmd.Flags()
			opts.HasTemperature = f.Changed("temperature")
			opts.HasTopP = f.Changed("top-p")
			opts.HasTopK = f.Changed("top-k")
			opts.HasSeed = f.Changed("seed")
			if err := opts.validate(); err != nil {
				return err
			}
			return runInfer(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&opts.Model, "model", "m", "", "model name (required)")
	f.IntVar(&opts.MaxTokens, "max-tokens", 128, "most tokens to generate")
	f.Float64Var(&opts.Temperature, "temperature", 0, "sampling temperature (0: greedy)")
	f.Float64Var(&opts.TopP, "top-p", 0, "nucleus sampling: keep tokens up to this probability mass")
	f.IntVar(&opts.TopK, "top-k", 0, "keep only the K most likely tokens")
	f.Uint32Var(&opts.Seed, "seed", 0, "random seed, for repeatable sampling")
	f.StringArrayVar(&opts.Stop, "stop", nil, "stop at this string (repeatable)")
	f.BoolVar(&opts.NoStream, "no-stream", false, "wait for the whole answer instead of streaming")
	return cmd
}

func (o *inferOptions) validate() error {
	switch {
	case o.Model == "":
		return usageErrorf("--model is required: the name of a model with a ready worker")
	case o.MaxTokens <= 0:
		return usageErrorf("--max-tokens must be more than 0, not %d", o.MaxTokens)
	case o.HasTemperature && o.Temperature < 0:
		return usageErrorf("--temperature must be 0 or more, not %g", o.Temperature)
	case o.HasTopP && (o.TopP <= 0 || o.TopP > 1):
		return usageErrorf("--top-p must be more than 0 and at most 1, not %g", o.TopP)
	case o.HasTopK && o.TopK < 0:
		return usageErrorf("--top-k must be 0 or more, not %d", o.TopK)
	}
	return nil
}

// request builds the completion request, with only the given flags set.
func (o *inferOptions) request(prompt string) openai.CompletionRequest {
	promptJSON, _ := json.Marshal(prompt)
	req := openai.CompletionRequest{
		Model:     o.Model,
		Prompt:    promptJSON,
		MaxTokens: &o.MaxTokens,
		Stream:    !o.NoStream,
	}
	if len(o.Stop) > 0 {
		req.Stop, _ = json.Marshal(o.Stop)
	}
	if req.Stream {
		req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	}
	if o.HasTemperature {
		req.Temperature = &o.Temperature
	}
	if o.HasTopP {
		req.TopP = &o.TopP
	}
	if o.HasTopK {
		req.TopK = &o.TopK
	}
	if o.HasSeed {
		seed := int64(o.Seed)
		req.Seed = &seed
	}
	return req
}

func runInfer(ctx context.Context, opts *inferOptions) error {
	prompt, err := readPrompt(ctx, opts)
	if err != nil {
		return err
	}
	c, err := opts.root.client()
	if err != nil {
		return err
	}
	req := opts.request(prompt)
	start := time.Now()

	if opts.NoStream {
		var answer openai.Completion
		if err := c.do(ctx, http.MethodPost, "/v1/completions", req, &answer); err != nil {
			return err
		}
		if len(answer.Choices) == 0 {
			return errors.New("the queen's answer holds no text (no choices)")
		}
		choice := answer.Choices[0]
		if _, err := io.WriteString(opts.root.Stdout, choice.Text+"\n"); err != nil {
			return err
		}
		printStats(opts.root.Stderr, streamResult{usage: answer.Usage, finish: deref(choice.FinishReason)},
			time.Since(start))
		return nil
	}

	resp, err := c.send(ctx, http.MethodPost, "/v1/completions", req, false)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	res, err := readStream(resp.Body, opts.root.Stdout)
	// End the line even when the stream broke, so that the shell prompt
	// starts on its own line.
	if _, werr := io.WriteString(opts.root.Stdout, "\n"); err == nil {
		err = werr
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	printStats(opts.root.Stderr, res, time.Since(start))
	return nil
}

// readPrompt joins the arguments, or reads stdin when there are none or
// the only one is "-". An empty prompt is a usage error.
func readPrompt(ctx context.Context, opts *inferOptions) (string, error) {
	prompt := strings.Join(opts.Args, " ")
	if len(opts.Args) == 0 || (len(opts.Args) == 1 && opts.Args[0] == "-") {
		if opts.root.StdinTTY {
			fmt.Fprintln(opts.root.Stderr, "rbee: reading the prompt from stdin; end it with Ctrl-D")
		}
		var err error
		prompt, err = readAll(ctx, opts.root.Stdin)
		if err != nil {
			return "", err
		}
	}
	if strings.TrimSpace(prompt) == "" {
		return "", usageErrorf("the prompt is empty: give it as arguments, or on stdin")
	}
	return prompt, nil
}

// readAll reads r until EOF or until ctx is done. A read cannot be
// cancelled: on ctx done the reading goroutine is left blocked, which is
// only acceptable because the process exits right after.
func readAll(ctx context.Context, r io.Reader) (string, error) {
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(io.LimitReader(r, maxPromptBytes))
		done <- result{b, err}
	}()
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case res := <-done:
		if res.err != nil {
			return "", fmt.Errorf("reading the prompt from stdin: %w", res.err)
		}
		return string(res.b), nil
	}
}

// streamResult is what the end of a stream tells about it.
type streamResult struct {
	usage  *openai.Usage
	finish string
}

// readStream reads the server-sent events of a streamed completion from r,
// writing each piece of text to out as it arrives, until "data: [DONE]".
// An error event ends it with that error.
func readStream(r io.Reader, out io.Writer) (streamResult, error) {
	var res streamResult
	events := httpapi.NewSSEReader(r)
	for {
		payload, done, err := events.Next()
		switch {
		case done:
			return res, nil
		case errors.Is(err, io.EOF):
			if res.finish != "" {
				return res, nil // all text came; only [DONE] is missing
			}
			return res, errors.New("the answer stream ended early: the queen or the worker went away")
		case err != nil:
			return res, fmt.Errorf("reading the answer stream: %w", err)
		}
		if err := handleEvent(string(payload), out, &res); err != nil {
			return res, err
		}
	}
}

// handleEvent applies one event's JSON payload: text goes to out, usage and
// finish reason into res, an error event becomes the returned error.
func handleEvent(payload string, out io.Writer, res *streamResult) error {
	var chunk openai.Completion
	if err := json.Unmarshal([]byte(payload), &chunk); err != nil {
		return fmt.Errorf("reading the answer stream: bad event %q: %w", truncate(payload, 80), err)
	}
	if chunk.Error != nil {
		return &apiError{status: http.StatusOK, detail: *chunk.Error}
	}
	if chunk.Usage != nil {
		res.usage = chunk.Usage
	}
	if len(chunk.Choices) == 0 {
		return nil
	}
	choice := chunk.Choices[0]
	if choice.FinishReason != nil && *choice.FinishReason != "" {
		res.finish = *choice.FinishReason
	}
	if choice.Text == "" {
		return nil
	}
	if _, err := io.WriteString(out, choice.Text); err != nil {
		return err
	}
	if f, ok := out.(interface{ Flush() error }); ok {
		return f.Flush()
	}
	return nil
}

// printStats writes the short statistics line of a completion to w.
func printStats(w io.Writer, res streamResult, wall time.Duration) {
	finish := orDash(res.finish)
	if res.usage == nil {
		fmt.Fprintf(w, "%.2fs, finish: %s\n", wall.Seconds(), finish)
		return
	}
	rate := 0.0
	if s := wall.Seconds(); s > 0 {
		rate = float64(res.usage.CompletionTokens) / s
	}
	fmt.Fprintf(w, "%d prompt + %d completion tokens, %.1f tok/s, finish: %s\n",
		res.usage.PromptTokens, res.usage.CompletionTokens, rate, finish)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
