package testmodel

import (
	"fmt"
	"strings"
)

// Token types as llama.cpp reads tokenizer.ggml.token_type.
const (
	tokenNormal  int32 = 1
	tokenUnknown int32 = 2
	tokenControl int32 = 3
	tokenByte    int32 = 6
)

// Special token ids.
const (
	unkID         = 0
	bosID         = 1
	eosID         = 2
	specialTokens = 3
)

// space is the SentencePiece word-boundary marker.
const space = "\u2581"

// commonWords seed the vocabulary with pieces that real text tokenizes into.
var commonWords = strings.Fields(`
	the and a to of was he she it in his her they you that with for on is
	said had but at as one day there were so not be this all up once upon
	time little big girl boy mom dad happy sad saw very went wanted play
	friend friends could would have then out what when can do did like
	see go came back tree ball dog cat bird sun sky house park home
	toy red blue green look looked run ran fun help good new old from by
	an are we my me your our their them him how who why where which more
	some any no yes now just over under into about after before again
	long way make made find found take took give gave love loved jump
	`)

// vocab is the tokenizer part of the model: one entry per token id.
type vocab struct {
	tokens []string
	scores []float32
	types  []int32
}

// newVocab builds a SentencePiece vocabulary of exactly size tokens: the
// special tokens, the 256 byte tokens, then normal pieces. Scores fall with
// the id, so the earlier (shorter, commoner) pieces are preferred.
func newVocab(size int) vocab {
	v := vocab{
		tokens: make([]string, 0, size),
		scores: make([]float32, 0, size),
		types:  make([]int32, 0, size),
	}
	v.add("<unk>", 0, tokenUnknown)
	v.add("<s>", 0, tokenControl)
	v.add("</s>", 0, tokenControl)
	for b := range 256 {
		v.add(fmt.Sprintf("<0x%02X>", b), 0, tokenByte)
	}

	seen := make(map[string]bool, size)
	for _, p := range v.tokens {
		seen[p] = true
	}
	for p := range pieces {
		if len(v.tokens) == size {
			break
		}
		if !seen[p] {
			seen[p] = true
			v.add(p, -float32(len(v.tokens)-minVocab), tokenNormal)
		}
	}
	return v
}

func (v *vocab) add(piece string, score float32, typ int32) {
	v.tokens = append(v.tokens, piece)
	v.scores = append(v.scores, score)
	v.types = append(v.types, typ)
}

// pieces is an endless sequence of candidate normal pieces, some repeated:
// single characters; each common word, lowercase and capitalized, with the
// prefixes that let the tokenizer merge up to it; then every lowercase
// string of growing length, bare and with a word-boundary marker.
func pieces(yield func(string) bool) {
	singles := space + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" +
		"0123456789" + ".,!?'\"-"
	for _, r := range singles {
		if !yield(string(r)) {
			return
		}
	}
	for _, w := range commonWords {
		if !wordPrefixes(w, yield) || !wordPrefixes(strings.ToUpper(w[:1])+w[1:], yield) {
			return
		}
	}
	for n := 2; ; n++ {
		if !lowercaseStrings(n, yield) {
			return
		}
	}
}

// wordPrefixes yields w's prefixes after a word-boundary marker, shortest
// first, so the tokenizer can merge its way up to the whole word; it
// reports whether yield wanted more.
func wordPrefixes(w string, yield func(string) bool) bool {
	for n := 1; n <= len(w); n++ {
		if !yield(space + w[:n]) {
			return false
		}
	}
	return true
}

// lowercaseStrings yields every string of n lowercase letters, with and
// without a leading word-boundary marker; it reports whether yield wanted
// more.
func lowercaseStrings(n int, yield func(string) bool) bool {
	buf := []byte(strings.Repeat("a", n))
	for {
		s := string(buf)
		if !yield(space+s) || !yield(s) {
			return false
		}
		// Advance buf like an odometer; stop after "zz..z".
		i := n - 1
		for ; i >= 0 && buf[i] == 'z'; i-- {
			buf[i] = 'a'
		}
		if i < 0 {
			return true
		}
		buf[i]++
	}
}
