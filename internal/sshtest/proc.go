package sshtest

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// killTree SIGKILLs root and all its descendants. sshd puts each connection
// in a session of its own (setsid), so killing its process group is not
// enough.
func killTree(root int) {
	for pid := range freezeTree(root) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// freezeTree SIGSTOPs root and all its descendants and returns them. It
// walks /proc until no new process shows up, so that nothing forks or is
// reparented away while the tree is collected. Linux only, like the
// machines rbee tests on.
func freezeTree(root int) map[int]bool {
	stopped := map[int]bool{}
	for round := 0; round < 20; round++ {
		found := false
		for _, pid := range append(descendants(root), root) {
			if !stopped[pid] {
				_ = syscall.Kill(pid, syscall.SIGSTOP)
				stopped[pid] = true
				found = true
			}
		}
		if !found {
			break
		}
	}
	return stopped
}

// thawTree SIGCONTs root and all its descendants.
func thawTree(root int) {
	for _, pid := range append(descendants(root), root) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
}

// descendants lists the processes below root, read from /proc.
func descendants(root int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentPID(pid); ok {
			children[ppid] = append(children[ppid], pid)
		}
	}

	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, child := range children[pid] {
			out = append(out, child)
			queue = append(queue, child)
		}
	}
	return out
}

// parentPID reads the parent of pid from /proc.
func parentPID(pid int) (int, bool) {
	fields := statFields(pid) // state, ppid, ...
	if len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return ppid, err == nil
}

// Alive reports whether process pid exists and has not exited: a zombie,
// dead but not yet reaped by its parent, counts as gone. Tests use it to
// check that a remote command (on this same machine) was ended.
func Alive(pid int) bool {
	fields := statFields(pid)
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// statFields returns the fields of /proc/PID/stat after the command name,
// which sits in parentheses and may itself hold spaces and brackets.
func statFields(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	return strings.Fields(rest)
}
