// Package procstat reads facts about the running process that the
// standard library does not offer, such as its resident memory.
package procstat

import (
	"os"
	"strconv"
	"strings"
)

// ResidentBytes is this process's resident set size, read from
// /proc/self/statm. It is 0 where there is no /proc (not Linux).
func ResidentBytes() int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}
