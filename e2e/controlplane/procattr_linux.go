package main

import "syscall"

// childProcAttr makes a child die with us even if we are SIGKILLed (Pdeathsig), and puts
// it in its own process group so that a terminal's Ctrl-C reaches only "up", which then
// stops the API server before etcd instead of racing it.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
