//go:build !linux

package testkit

import "os/exec"

// KillWithTest is a no-op where the kernel offers no parent-death signal.
func KillWithTest(*exec.Cmd) {}
