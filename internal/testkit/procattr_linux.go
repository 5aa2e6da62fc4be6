package testkit

import (
	"os/exec"
	"syscall"
)

// KillWithTest makes the kernel kill cmd when the test binary dies, so a
// test killed by its timeout leaves no broker or hub running behind it.
func KillWithTest(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
