package queen

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/api/openai"
	"github.com/rbee-dev/rbee/internal/httpapi"
)

// maxEmbeddingInputs bounds the inputs of one request, as OpenAI does.
const maxEmbeddingInputs = 2048

// toEmbeddingInputs validates an embeddings request, naming the field at
// fault, and returns its inputs.
//
// Shortcoming: only "float" vectors are served. OpenAI's Python SDK asks
// for "base64" whenever its caller did not choose a format, so its
// embeddings calls get this 400 unless they pass encoding_format="float".
func toEmbeddingInputs(req openai.EmbeddingRequest) ([]string, error) {
	if req.Model == "" {
		return nil, errModelRequired
	}
	if req.EncodingFormat != "" && req.EncodingFormat != "float" {
		return nil, httpapi.BadRequest("encoding_format",
			"encoding_format %q is not supported: use \"float\"", req.EncodingFormat)
	}
	if req.Dimensions != nil {
		return nil, httpapi.BadRequest("dimensions",
			"dimensions is not supported: vectors have the model's own size")
	}
	inputs, ok := openai.StringOrList(req.Input)
	switch {
	case !ok:
		return nil, httpapi.BadRequest("input",
			"input must be a string or a list of strings (token arrays are not supported)")
	case len(inputs) == 0:
		return nil, httpapi.BadRequest("input", "input is required: a string or a list of strings")
	case len(inputs) > maxEmbeddingInputs:
		return nil, httpapi.BadRequest("input", "input holds %d strings, at most %d are allowed",
			len(inputs), maxEmbeddingInputs)
	}
	for i, in := range inputs {
		if in == "" {
			return nil, httpapi.BadRequest("input", "input %d is empty", i)
		}
	}
	return inputs, nil
}

func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) (err error) {
	var req openai.EmbeddingRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		return err
	}
	defer func() { s.metrics.request(req.Model, err) }()
	inputs, err := toEmbeddingInputs(req)
	if err != nil {
		return err
	}
	resp, l, err := s.forward(r.Context(), req.Model, "/v1/embedding",
		api.EmbeddingRequest{Input: inputs})
	if err != nil {
		return err
	}
	defer l.release()
	defer resp.Body.Close()

	var got api.EmbeddingResponse
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return httpapi.Upstream(err, "worker %s sent unreadable embeddings", l.workerID)
	}
	if len(got.Embeddings) != len(inputs) {
		n := len(got.Embeddings)
		return httpapi.Upstream(fmt.Errorf("%d embeddings for %d inputs", n, len(inputs)),
			"worker %s sent %d embeddings for %d inputs", l.workerID, n, len(inputs))
	}
	tokens := got.PromptTokens
	out := openai.EmbeddingList{Object: "list", Model: req.Model,
		Data:  make([]openai.Embedding, len(inputs)),
		Usage: openai.EmbeddingsUsage{PromptTokens: tokens, TotalTokens: tokens}}
	for i, vec := range got.Embeddings {
		out.Data[i] = openai.Embedding{Object: "embedding", Index: i, Embedding: vec}
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}
