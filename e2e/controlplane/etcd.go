package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// startEtcd runs a single-member etcd in this process, listening on 127.0.0.1 only, and
// waits until it serves. It runs in-process (not re-executed) because nothing else here
// owns etcd's globals, and it spares a child to supervise.
func startEtcd(ctx context.Context, dataDir, logPath string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "wif-e2e"
	cfg.Dir = dataDir
	client := url.URL{Scheme: "http", Host: hostPort(clientPort)}
	peer := url.URL{Scheme: "http", Host: hostPort(peerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Test data is throw-away: skipping fsync makes every API write much cheaper.
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.LogLevel = "info"
	cfg.LogOutputs = []string{logPath}
	// NewConfig leaves this at 0 (etcd's own flag defaults it), which would log every
	// request as "expensive" and bury real errors in the log tail.
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed while starting: %w", err)
	case <-e.Server.StopNotify():
		e.Close()
		return nil, fmt.Errorf("etcd stopped while starting")
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("etcd not ready: %w", context.Cause(ctx))
	}
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// freePorts returns n distinct free ports on 127.0.0.1. All listeners are held open
// until every port is chosen, so the n ports differ from each other; another process may
// still take one before we bind it again, a race too rare to be worth retrying for.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// etcdStopTimeout bounds Close: etcd's graceful stop waits for in-flight gRPC streams.
const etcdStopTimeout = 10 * time.Second

func stopEtcd(e *embed.Etcd) {
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(etcdStopTimeout):
		logf("etcd did not stop within %s; exiting anyway", etcdStopTimeout)
	}
}
