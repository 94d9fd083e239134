package engine

import (
	"strings"
	"unicode/utf8"
)

// stopFilter sits between the sampler and the client. It holds back text
// that could still become a stop string, and the bytes of a character that a
// token split in two, so the client never sees half a stop string or
// invalid UTF-8.
type stopFilter struct {
	stops   []string
	pending string
}

// push adds a token's text. It returns the text that is now safe to send,
// and whether a stop string was found (the stop string itself and anything
// after it are dropped).
func (f *stopFilter) push(piece string) (out string, stopped bool) {
	f.pending += piece
	if i := f.firstStop(); i >= 0 {
		out = f.pending[:i]
		f.pending = ""
		return out, true
	}
	cut := len(f.pending) - f.heldBack()
	out, f.pending = f.pending[:cut], f.pending[cut:]
	return out, false
}

// flush returns whatever is held back, at the end of generation.
func (f *stopFilter) flush() string {
	out := f.pending
	f.pending = ""
	return out
}

// firstStop is the index of the earliest stop string in pending, or -1.
func (f *stopFilter) firstStop() int {
	first := -1
	for _, stop := range f.stops {
		if i := strings.Index(f.pending, stop); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	return first
}

// heldBack is how many trailing bytes of pending must wait for more text.
func (f *stopFilter) heldBack() int {
	held := incompleteRuneTail(f.pending)
	for _, stop := range f.stops {
		for n := min(len(stop)-1, len(f.pending)); n > held; n-- {
			if strings.HasSuffix(f.pending, stop[:n]) {
				held = n
				break
			}
		}
	}
	return held
}

// incompleteRuneTail is the length of a UTF-8 sequence cut short at the
// end of s (0 when s ends on a whole character).
func incompleteRuneTail(s string) int {
	for n := 1; n <= min(utf8.UTFMax-1, len(s)); n++ {
		b := s[len(s)-n]
		if b < utf8.RuneSelf {
			return 0 // ASCII: nothing pending
		}
		if utf8.RuneStart(b) {
			if utf8.FullRuneInString(s[len(s)-n:]) {
				return 0
			}
			return n
		}
	}
	return 0
}
