//go:build !linux

package main

import "syscall"

// childProcAttr: without Pdeathsig (Linux only) a SIGKILLed "up" leaves its children
// running; they still stop when "up" exits normally.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
