package engine

import (
	"strings"
	"testing"

	"gotest.tools/v3/assert"
)

func TestStopFilter(t *testing.T) {
	tests := []struct {
		name        string
		stops       []string
		pieces      []string
		wantOut     string
		wantStopped bool
	}{
		{name: "no stops", pieces: []string{"a", "b"}, wantOut: "ab"},
		{name: "stop inside one piece", stops: []string{"END"}, pieces: []string{"abENDcd"},
			wantOut: "ab", wantStopped: true},
		{name: "stop split across pieces", stops: []string{"END"}, pieces: []string{"ab", "E", "N", "Dxx"},
			wantOut: "ab", wantStopped: true},
		{name: "prefix that does not complete", stops: []string{"END"}, pieces: []string{"ab", "EN", "X"},
			wantOut: "abENX"},
		{name: "earliest of two stops", stops: []string{"zz", "b"}, pieces: []string{"abzz"},
			wantOut: "a", wantStopped: true},
		{name: "split multibyte character", pieces: []string{"caf", "\xc3", "\xa9!"}, wantOut: "café!"},
		{name: "stop right at the start", stops: []string{"\n"}, pieces: []string{"\nhello"},
			wantOut: "", wantStopped: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := stopFilter{stops: tc.stops}
			var out strings.Builder
			stopped := false
			for _, p := range tc.pieces {
				text, hit := f.push(p)
				out.WriteString(text)
				if hit {
					stopped = true
					break
				}
			}
			if !stopped {
				out.WriteString(f.flush())
			}
			assert.Equal(t, out.String(), tc.wantOut)
			assert.Equal(t, stopped, tc.wantStopped)
		})
	}
}

func TestStopFilterNeverEmitsHalfACharacter(t *testing.T) {
	f := stopFilter{}
	out, _ := f.push("caf\xc3")
	assert.Equal(t, out, "caf")
	out, _ = f.push("\xa9")
	assert.Equal(t, out, "é")
}
