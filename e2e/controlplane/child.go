package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// child is a re-executed component (kube-apiserver or kube-controller-manager) whose
// stdout and stderr go to its own log file.
type child struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited; err is then set
	err     error
}

func startChild(name, logPath string, args []string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return startProcess(name, logPath, self, append([]string{name}, args...), nil)
}

// startProcess runs program (this binary or another one, e.g. containerd) as a child that
// dies with us; env nil keeps ours.
func startProcess(name, logPath, program string, args, env []string) (*child, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(program, args...)
	cmd.Env = env
	cmd.Stdin = nil // /dev/null: stdin EOF is "up"'s own shutdown signal, not the child's
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = childProcAttr()
	c := &child{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}

	started := make(chan error, 1)
	go func() {
		// On Linux the parent-death signal fires when the *thread* that forked the child
		// exits, not the process (golang/go#27505). Lock this goroutine to its thread
		// and never unlock: the Go runtime then cannot retire the thread while the
		// child lives, and retires it (harmlessly) only after Wait returns.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.err = cmd.Wait()
		log.Close()
		close(c.done)
	}()
	if err := <-started; err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop asks the child to shut down gracefully (SIGTERM) and kills it after timeout.
func (c *child) stop(timeout time.Duration) {
	if c == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(timeout):
		logf("%s did not stop within %s; killing it", c.name, timeout)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// tail returns the last n lines of a log file, for failure reports.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)\n", path, err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return "(empty)\n"
	}
	return strings.Join(lines, "\n") + "\n"
}
