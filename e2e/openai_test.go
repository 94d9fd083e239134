package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
	"gotest.tools/v3/poll"

	"github.com/rbee-dev/rbee/internal/api"
)

// sdk is the official OpenAI Go client pointed at the queen. It never
// retries on its own, so every failure the queen returns is seen.
func (c *cluster) sdk() openai.Client {
	return openai.NewClient(option.WithBaseURL(c.url+"/v1/"),
		option.WithAPIKey("unused-on-loopback"), option.WithMaxRetries(0),
		option.WithRequestTimeout(2*time.Minute))
}

// withUsage asks for the usage chunk at the end of a stream.
var withUsage = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}

// The prompt every test here starts from, and a long generation: greedy,
// so the same every time, and stories260K writes on for seconds before its
// context fills, which keeps a slot busy while a test looks at it.
const (
	storyStart    = "Once upon a time"
	longMaxTokens = 4000
)

func completionParams(model string, maxTokens int64) openai.CompletionNewParams {
	return openai.CompletionNewParams{
		Model:       openai.CompletionNewParamsModel(model),
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String(storyStart)},
		MaxTokens:   openai.Int(maxTokens),
		Temperature: openai.Float(0),
	}
}

func TestOpenAISDKModelsAndCompletions(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.spawn("--slots", "2")
	client := c.sdk()
	ctx := context.Background()

	t.Run("models", func(t *testing.T) {
		page, err := client.Models.List(ctx)
		assert.NilError(t, err)
		assert.Equal(t, len(page.Data), 1)
		m := page.Data[0]
		assert.Equal(t, m.ID, c.model.Name)
		assert.Equal(t, string(m.Object), "model")
		assert.Equal(t, m.OwnedBy, "rbee")
		assert.Equal(t, m.JSON.ExtraFields["replicas"].Raw(), "1")
		assert.Equal(t, m.JSON.ExtraFields["hives"].Raw(), `["localhost"]`)

		one, err := client.Models.Get(ctx, c.model.Name)
		assert.NilError(t, err)
		assert.Equal(t, one.ID, c.model.Name)
		_, err = client.Models.Get(ctx, "no-such-model")
		assert.Equal(t, asAPIError(t, err).StatusCode, http.StatusNotFound)
	})

	// A greedy answer without a stop string, to choose one from.
	free, err := client.Completions.New(ctx, completionParams(c.model.Name, 30))
	assert.NilError(t, err)
	assert.Equal(t, len(free.Choices), 1)
	assert.Equal(t, string(free.Choices[0].FinishReason), "length")
	assert.Equal(t, free.Usage.CompletionTokens, int64(30))
	assert.Assert(t, free.Usage.PromptTokens > 0)
	assert.Equal(t, free.Usage.TotalTokens, free.Usage.PromptTokens+free.Usage.CompletionTokens)
	stop, before := stopStringIn(t, free.Choices[0].Text)

	t.Run("whole, with a stop string", func(t *testing.T) {
		params := completionParams(c.model.Name, 30)
		params.Stop = openai.CompletionNewParamsStopUnion{OfString: openai.String(stop)}

		got, err := client.Completions.New(ctx, params)

		assert.NilError(t, err)
		assert.Equal(t, string(got.Object), "text_completion")
		assert.Equal(t, got.Model, c.model.Name)
		assert.Equal(t, got.Choices[0].Text, before)
		assert.Equal(t, string(got.Choices[0].FinishReason), "stop")
		assert.Equal(t, got.Usage.PromptTokens, free.Usage.PromptTokens)
		assert.Assert(t, got.Usage.CompletionTokens < 30)
	})

	t.Run("streamed, with usage", func(t *testing.T) {
		params := completionParams(c.model.Name, 30)
		params.StreamOptions = withUsage

		stream := client.Completions.NewStreaming(ctx, params)

		var text strings.Builder
		var reasons []string
		var usage []openai.CompletionUsage
		chunks := 0
		for stream.Next() {
			chunk := stream.Current()
			chunks++
			for _, ch := range chunk.Choices {
				text.WriteString(ch.Text)
				if ch.FinishReason != "" {
					reasons = append(reasons, string(ch.FinishReason))
				}
			}
			if chunk.JSON.Usage.Valid() {
				assert.Equal(t, len(chunk.Choices), 0, "usage comes in a chunk of its own")
				usage = append(usage, chunk.Usage)
			}
		}
		assert.NilError(t, stream.Err())
		assert.Equal(t, text.String(), free.Choices[0].Text,
			"greedy: the same text streamed or whole")
		assert.DeepEqual(t, reasons, []string{"length"})
		assert.Equal(t, len(usage), 1)
		assert.Equal(t, usage[0].CompletionTokens, int64(30))
		assert.Equal(t, usage[0].TotalTokens, usage[0].PromptTokens+30)
		assert.Assert(t, chunks > 5, "tokens should arrive as separate chunks, got %d", chunks)
	})

	t.Run("streamed, with a stop string", func(t *testing.T) {
		params := completionParams(c.model.Name, 30)
		params.Stop = openai.CompletionNewParamsStopUnion{
			OfStringArray: []string{stop, "never-said"}}

		stream := client.Completions.NewStreaming(ctx, params)

		var text strings.Builder
		var last string
		for stream.Next() {
			for _, ch := range stream.Current().Choices {
				text.WriteString(ch.Text)
				last = string(ch.FinishReason)
			}
		}
		assert.NilError(t, stream.Err())
		assert.Equal(t, text.String(), before)
		assert.Equal(t, last, "stop")
	})

	t.Run("refused parameters name the field", func(t *testing.T) {
		params := completionParams(c.model.Name, 5)
		params.N = openai.Int(2)

		_, err := client.Completions.New(ctx, params)

		apiErr := asAPIError(t, err)
		assert.Equal(t, apiErr.StatusCode, http.StatusBadRequest)
		assert.Equal(t, apiErr.Param, "n")
	})

	t.Run("embeddings", func(t *testing.T) {
		got, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: c.model.Name,
			Input: openai.EmbeddingNewParamsInputUnion{
				OfArrayOfStrings: []string{"a cat", "a dog"}},
		})

		assert.NilError(t, err)
		assert.Equal(t, len(got.Data), 2)
		for i, e := range got.Data {
			assert.Equal(t, e.Index, int64(i))
			assert.Assert(t, len(e.Embedding) > 0)
			assert.Equal(t, len(e.Embedding), len(got.Data[0].Embedding))
		}
		assert.Assert(t, got.Usage.PromptTokens > 0)
	})
}

// stopStringIn picks a short piece from the middle of text that does not
// occur earlier, and returns it with the text before it.
func stopStringIn(t *testing.T, text string) (stop, before string) {
	t.Helper()
	for i := len(text) / 3; i+4 <= len(text); i++ {
		candidate := text[i : i+4]
		if strings.TrimSpace(candidate) == candidate && strings.Index(text, candidate) == i &&
			!strings.ContainsAny(candidate, "\n\ufffd") && validUTF8Boundary(text, i, i+4) {
			return candidate, text[:i]
		}
	}
	t.Fatalf("no stop string to pick from %q", text)
	return "", ""
}

// validUTF8Boundary reports whether text[i:j] starts and ends on whole
// characters.
func validUTF8Boundary(text string, i, j int) bool {
	startsWhole := func(k int) bool { return k == len(text) || text[k]&0xC0 != 0x80 }
	return startsWhole(i) && startsWhole(j)
}

func asAPIError(t *testing.T, err error) *openai.Error {
	t.Helper()
	var apiErr *openai.Error
	assert.Assert(t, errors.As(err, &apiErr), "want an API error, got %v", err)
	return apiErr
}

func chatParams(model string, maxTokens int64,
	messages ...openai.ChatCompletionMessageParamUnion) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:               model,
		Messages:            messages,
		MaxCompletionTokens: openai.Int(maxTokens),
		Temperature:         openai.Float(0),
	}
}

func TestOpenAISDKChat(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.spawn("--slots", "2")
	client := c.sdk()
	ctx := context.Background()

	whole, err := client.Chat.Completions.New(ctx, chatParams(c.model.Name, 20,
		openai.SystemMessage("You tell stories."), openai.UserMessage(storyStart)))
	assert.NilError(t, err)

	t.Run("whole", func(t *testing.T) {
		assert.Equal(t, string(whole.Object), "chat.completion")
		assert.Assert(t, strings.HasPrefix(whole.ID, "chatcmpl-"))
		assert.Equal(t, len(whole.Choices), 1)
		msg := whole.Choices[0].Message
		assert.Equal(t, string(msg.Role), "assistant")
		assert.Assert(t, msg.Content != "")
		assert.Assert(t, is.Contains([]string{"stop", "length"}, whole.Choices[0].FinishReason))
		assert.Assert(t, whole.Usage.PromptTokens > 0 && whole.Usage.CompletionTokens > 0)
	})

	t.Run("streamed, with usage", func(t *testing.T) {
		params := chatParams(c.model.Name, 20,
			openai.SystemMessage("You tell stories."), openai.UserMessage(storyStart))
		params.StreamOptions = withUsage

		stream := client.Chat.Completions.NewStreaming(ctx, params)

		var chunks []openai.ChatCompletionChunk
		for stream.Next() {
			chunks = append(chunks, stream.Current())
		}
		assert.NilError(t, stream.Err())
		assert.Assert(t, len(chunks) >= 3,
			"role, finish and usage chunks at least: %d", len(chunks))
		first, finish, usage := chunks[0], chunks[len(chunks)-2], chunks[len(chunks)-1]
		assert.Equal(t, first.Choices[0].Delta.Role, "assistant")
		assert.Equal(t, first.Choices[0].Delta.Content, "")
		var text strings.Builder
		for _, ch := range chunks[1 : len(chunks)-2] {
			assert.Equal(t, string(ch.Object), "chat.completion.chunk")
			assert.Equal(t, ch.ID, first.ID)
			assert.Equal(t, ch.Choices[0].FinishReason, "")
			text.WriteString(ch.Choices[0].Delta.Content)
		}
		assert.Equal(t, text.String(), whole.Choices[0].Message.Content,
			"greedy: the same text streamed or whole")
		assert.Equal(t, finish.Choices[0].FinishReason, whole.Choices[0].FinishReason)
		assert.Equal(t, finish.Choices[0].Delta.Content, "")
		assert.Equal(t, len(usage.Choices), 0)
		assert.Equal(t, usage.Usage.PromptTokens, whole.Usage.PromptTokens)
		assert.Equal(t, usage.Usage.CompletionTokens, whole.Usage.CompletionTokens)
	})

	t.Run("a model without a template gets the plain fallback", func(t *testing.T) {
		chat, err := client.Chat.Completions.New(ctx, chatParams(c.model.Name, 20,
			openai.UserMessage(storyStart)))
		assert.NilError(t, err)
		// api.ChatFallbackTemplate: "role: content" lines, then "assistant:".
		params := completionParams(c.model.Name, 20)
		params.Prompt = openai.CompletionNewParamsPromptUnion{
			OfString: openai.String("user: " + storyStart + "\nassistant:")}
		params.Stop = openai.CompletionNewParamsStopUnion{
			OfStringArray: []string{"\nuser:", "\nsystem:"}}
		plain, err := client.Completions.New(ctx, params)
		assert.NilError(t, err)

		assert.Equal(t, chat.Usage.PromptTokens, plain.Usage.PromptTokens)
		assert.Equal(t, chat.Choices[0].Message.Content, plain.Choices[0].Text)
	})

	t.Run("content parts", func(t *testing.T) {
		got, err := client.Chat.Completions.New(ctx, chatParams(c.model.Name, 5,
			openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
				openai.TextContentPart("Once upon"), openai.TextContentPart("a time")})))
		assert.NilError(t, err)
		assert.Assert(t, got.Choices[0].Message.Content != "")
	})

	t.Run("bad role names the field", func(t *testing.T) {
		status, body := c.postJSON("/v1/chat/completions", `{"model":"`+c.model.Name+`",`+
			`"messages":[{"role":"user","content":"hi"},{"role":"wizard","content":"hi"}]}`)
		assert.Equal(t, status, http.StatusBadRequest, string(body))
		assert.Assert(t, is.Contains(string(body), `"param":"messages[1].role"`))
	})
}

func TestTwoWorkersShareTheLoadAndSurviveAKill(t *testing.T) {
	c := newCluster(t, clusterOptions{heartbeatInterval: 200 * time.Millisecond})
	// Whichever of the two is killed stays lost: not started again.
	a := c.spawn("--slots", "2", "--ctx-size", "4096", "--restart", "never")
	b := c.spawn("--slots", "2", "--ctx-size", "4096", "--restart", "never")
	if b.ID < a.ID {
		a, b = b, a // a: the worker the router picks first on a tie
	}
	client := c.sdk()
	ctx := context.Background()

	// While a long answer holds a slot of a, the next request goes to b,
	// the least busy worker; once a is idle again, a takes the next one
	// (ties go to the lowest id).
	holder := openStream(t, client, c.model.Name, longMaxTokens)
	waitBusy(t, c, a.ID, 1)
	_, err := client.Completions.New(ctx, completionParams(c.model.Name, 5))
	assert.NilError(t, err)
	waitServed(t, b, 1)
	holder.leave()
	waitBusy(t, c, a.ID, 0)
	_, err = client.Completions.New(ctx, completionParams(c.model.Name, 5))
	assert.NilError(t, err)
	waitServed(t, a, 1)
	assert.Equal(t, health(t, b).RequestsServed, int64(1))

	// One stream on each; then b dies mid-answer.
	waitBusy(t, c, a.ID, 0)
	waitBusy(t, c, b.ID, 0)
	onA := openStream(t, client, c.model.Name, longMaxTokens)
	waitBusy(t, c, a.ID, 1)
	onB := openStream(t, client, c.model.Name, longMaxTokens)
	waitBusy(t, c, b.ID, 1)

	assert.NilError(t, syscall.Kill(b.PID, syscall.SIGKILL))

	err = onB.finishWithin(t, 15*time.Second)
	var streamErr *ssestream.StreamError
	assert.Assert(t, errors.As(err, &streamErr), "want an error event, got %v", err)
	assert.Assert(t, is.Contains(string(streamErr.Event.Data), "upstream_error"))
	assert.Assert(t, onB.text() != "", "the stream had started")
	// The stream on the survivor goes on.
	sofar := len(onA.text())
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if len(onA.text()) == sofar {
			return poll.Continue("no new text on the survivor")
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(10*time.Millisecond))
	onA.leave()

	// Once the queen has marked b lost, every request goes to a.
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if state := c.worker(b.ID).State; state != api.WorkerLost {
			return poll.Continue("worker %s is %s", b.ID, state)
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(50*time.Millisecond))
	before := health(t, a).RequestsServed
	const requests = 20
	errs := make(chan error, requests)
	var wg sync.WaitGroup
	for i := range requests {
		wg.Go(func() {
			_, err := client.Completions.New(ctx, completionParams(c.model.Name, 8))
			if err != nil {
				errs <- fmt.Errorf("request %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NilError(t, err)
	}
	waitServed(t, a, before+requests)
}

// waitServed waits until worker w has served n requests in all (the count
// may lag the answer by a moment) and checks it served no more.
func waitServed(t *testing.T, w api.Worker, n int64) {
	t.Helper()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if served := health(t, w).RequestsServed; served < n {
			return poll.Continue("worker %s served %d requests, want %d", w.ID, served, n)
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(20*time.Millisecond))
	assert.Equal(t, health(t, w).RequestsServed, n)
}

// liveStream is a streamed completion being read in the background.
type liveStream struct {
	mu     sync.Mutex
	buf    strings.Builder
	done   chan error
	cancel context.CancelFunc
}

// openStream starts a streamed completion and returns once its first
// chunk arrived, so the request holds a worker's slot.
func openStream(t *testing.T, client openai.Client, model string, maxTokens int64) *liveStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream := client.Completions.NewStreaming(ctx, completionParams(model, maxTokens))
	s := &liveStream{done: make(chan error, 1), cancel: cancel}
	started := make(chan struct{})
	go func() {
		defer close(s.done)
		once := sync.OnceFunc(func() { close(started) })
		defer once()
		for stream.Next() {
			s.mu.Lock()
			for _, ch := range stream.Current().Choices {
				s.buf.WriteString(ch.Text)
			}
			s.mu.Unlock()
			once()
		}
		s.done <- stream.Err()
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("no first chunk")
	}
	return s
}

func (s *liveStream) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// leave disconnects, as a client that has read enough, and waits until
// the reader stopped.
func (s *liveStream) leave() {
	s.cancel()
	<-s.done
}

// finish waits for the stream's end and returns its error.
func (s *liveStream) finish() error { return <-s.done }

// finishWithin is finish, failing the test if the stream hangs.
func (s *liveStream) finishWithin(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case err := <-s.done:
		return err
	case <-time.After(limit):
		t.Fatalf("the stream did not end within %s", limit)
		return nil
	}
}

// waitBusy waits until the queen counts n busy slots on worker id.
func waitBusy(t *testing.T, c *cluster, id string, n int) {
	t.Helper()
	poll.WaitOn(t, func(poll.LogT) poll.Result {
		if busy := c.worker(id).SlotsBusy; busy != n {
			return poll.Continue("worker %s has %d busy slots, want %d", id, busy, n)
		}
		return poll.Success()
	}, poll.WithTimeout(10*time.Second), poll.WithDelay(10*time.Millisecond))
}

func TestBusyModelAnswersQueueFullAndTimeout(t *testing.T) {
	const queueWait = time.Second
	c := newCluster(t, clusterOptions{queueLimit: 1, queueWait: queueWait})
	w := c.spawn("--slots", "1", "--ctx-size", "4096")
	client := c.sdk()

	// A long greedy answer holds the only slot.
	holder := openStream(t, client, c.model.Name, longMaxTokens)
	waitBusy(t, c, w.ID, 1)

	// Two more: one takes the queue's only place and waits out the queue
	// wait (504), the other finds the queue full (429). Both say when to
	// come back.
	statuses := make(chan *openai.Error, 2)
	for range 2 {
		go func() {
			ctx := context.Background()
			_, err := client.Completions.New(ctx, completionParams(c.model.Name, 5))
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				apiErr = &openai.Error{Message: fmt.Sprint(err)}
			}
			statuses <- apiErr
		}()
	}
	start := time.Now()
	var got []int
	for range 2 {
		apiErr := <-statuses
		got = append(got, apiErr.StatusCode)
		assert.Assert(t, apiErr.Response != nil, "no HTTP answer: %s", apiErr.Message)
		assert.Equal(t, apiErr.Response.Header.Get("Retry-After"), "1")
		switch apiErr.StatusCode {
		case http.StatusTooManyRequests:
			assert.Equal(t, apiErr.Code, "queue_full")
		case http.StatusGatewayTimeout:
			assert.Equal(t, apiErr.Code, "queue_timeout")
			assert.Assert(t, time.Since(start) >= queueWait-100*time.Millisecond)
		}
	}
	slices.Sort(got)
	assert.DeepEqual(t, got, []int{http.StatusTooManyRequests, http.StatusGatewayTimeout})
	assert.Equal(t, c.worker(w.ID).SlotsBusy, 1, "the holder still generates")

	// The holder leaves: that frees the slot at once, for the next request.
	holder.leave()
	_, err := client.Completions.New(context.Background(), completionParams(c.model.Name, 5))
	assert.NilError(t, err, "the freed slot serves again")
}
