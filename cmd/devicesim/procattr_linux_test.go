package main

import (
	"os/exec"
	"syscall"
)

// dieWithTest kills a child process when the test binary dies, so a killed
// `go test` leaves no broker or hub behind.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
