// Command maxrss runs a command once and prints, as one JSON line, its wall
// time and its peak RSS (ru_maxrss). It exists because a child started by a
// large process such as a test binary is cloned with that process's memory
// (vfork), and Linux then reports the parent's peak as the child's: from
// this small program the floor is a few MB instead of the test's ~25 MB.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: maxrss COMMAND [ARG...]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stderr = os.Stderr
	start := time.Now()
	out, err := cmd.Output()
	wall := time.Since(start)
	if err != nil {
		fmt.Fprintf(os.Stderr, "maxrss: %v\n", err)
		os.Exit(1)
	}
	var kb int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		kb = ru.Maxrss // kilobytes on Linux
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"wall_ns": wall.Nanoseconds(), "maxrss_kb": kb, "stdout": string(out)})
}
