package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	// azureAudience is the audience Entra workload identity federation expects.
	azureAudience = "api://AzureADTokenExchange"
	// kcmControllers are the only controllers the tests need: a "default" ServiceAccount
	// and kube-root-ca.crt ConfigMap per namespace, ownerReference cascades, and
	// namespace deletion that finishes instead of sticking in Terminating.
	kcmControllers = "serviceaccount-controller,garbage-collector-controller," +
		"namespace-controller,root-ca-certificate-publisher-controller"
	// nodeControllers are added with --node: what Deployments, their Services and PDBs need.
	// node-lifecycle-controller lifts the not-ready taint the kubelet registers with.
	nodeControllers = ",deployment-controller,replicaset-controller,endpoints-controller," +
		"endpointslice-controller,disruption-controller,node-lifecycle-controller"
	childStopTimeout = 20 * time.Second
	logTailLines     = 40
)

// readyInfo is the JSON on the READY line; field order is the documented one.
type readyInfo struct {
	Kubeconfig string `json:"kubeconfig"`
	Server     string `json:"server"`
	Issuer     string `json:"issuer"`
	CA         string `json:"ca"`
	Dir        string `json:"dir"`
	// With --node: the node's name, its pod network and the host's address on it (where pods
	// reach processes of this machine).
	Node    string `json:"node,omitempty"`
	PodCIDR string `json:"podCIDR,omitempty"`
	Gateway string `json:"gateway,omitempty"`
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "controlplane: "+format+"\n", args...)
}

// errStopRequested marks a shutdown asked for by a signal or stdin EOF: not a failure.
var errStopRequested = errors.New("stop requested")

type upOptions struct {
	dir, kubeconfig string
	kcm             bool
	node            bool
	images          string
	featureGates    string
	apiPort         int
	etcdPort        int
	timeout         time.Duration
	exitOnStdinEOF  bool
}

// plane is one running control plane; fields are set as components come up, so that
// shutdown can stop whatever exists.
type plane struct {
	opts      upOptions
	etcd      *embed.Etcd
	apiserver *child
	kcm       *child
	node      *node
	clients   *kubernetes.Clientset
	logs      []string // logs worth showing on failure, in start order
}

func up(args []string) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var o upOptions
	fs.StringVar(&o.dir, "dir", "", "working directory for PKI, logs and etcd data (required)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "where to write the admin kubeconfig (default DIR/admin.kubeconfig)")
	fs.BoolVar(&o.kcm, "kcm", false, "also run kube-controller-manager ("+kcmControllers+")")
	fs.BoolVar(&o.node, "node", false, "also run a node: containerd, a kubelet, kube-scheduler and a pod network (implies --kcm)")
	fs.StringVar(&o.images, "images", "", "with --node: import every OCI archive (*.tar) of this directory (`make images`)")
	fs.StringVar(&o.featureGates, "apiserver-feature-gates", "", "kube-apiserver --feature-gates (e.g. WatchList=false, to test what older clusters do)")
	fs.IntVar(&o.apiPort, "port", 0, "kube-apiserver port on 127.0.0.1 (default: a free one)")
	fs.IntVar(&o.etcdPort, "etcd-port", 0, "etcd client port on 127.0.0.1 (default: a free one)")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up if not ready within this time")
	fs.BoolVar(&o.exitOnStdinEOF, "exit-on-stdin-eof", true, "shut down when stdin reaches EOF (so a dying parent tears us down)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.dir == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "controlplane up: --dir is required and no positional arguments are accepted")
		fs.Usage()
		return 2
	}
	var err error
	if o.dir, err = filepath.Abs(o.dir); err != nil {
		logf("%v", err)
		return 1
	}
	if o.images != "" && !o.node {
		fmt.Fprintln(os.Stderr, "controlplane up: --images needs --node")
		return 2
	}
	if o.node {
		o.kcm = true
	}
	if o.images != "" {
		if o.images, err = filepath.Abs(o.images); err != nil {
			logf("%v", err)
			return 1
		}
	}
	if o.kubeconfig == "" {
		o.kubeconfig = filepath.Join(o.dir, "admin.kubeconfig")
	}
	if o.kubeconfig, err = filepath.Abs(o.kubeconfig); err != nil {
		logf("%v", err)
		return 1
	}

	// stop is cancelled by SIGTERM/SIGINT or stdin EOF.
	stop, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		logf("received %s; shutting down", s)
		// A second signal gets the default action: an immediate exit, and the children
		// follow through their parent-death signal.
		signal.Reset(syscall.SIGTERM, syscall.SIGINT)
		cancel(errStopRequested)
	}()
	if o.exitOnStdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			logf("stdin closed; shutting down")
			cancel(errStopRequested)
		}()
	}

	p := &plane{opts: o}
	err = p.run(stop)
	p.shutdown()
	switch {
	case err == nil || errors.Is(err, errStopRequested):
		return 0
	default:
		logf("FAILED: %v", err)
		for _, l := range p.logs {
			fmt.Fprintf(os.Stderr, "----- last %d lines of %s -----\n%s", logTailLines, l, tail(l, logTailLines))
		}
		// Again after the tails, so that the end of our own log says what failed.
		logf("FAILED: %v", err)
		return 1
	}
}

// run brings the control plane up, prints READY, and then blocks until a stop request
// (returns errStopRequested) or a component failure (returns the failure).
func (p *plane) run(stop context.Context) error {
	o := p.opts
	t0 := time.Now()
	// Startup as a whole has one deadline, so a wedged component can never hang us.
	ctx, cancel := context.WithTimeoutCause(stop, o.timeout,
		fmt.Errorf("control plane not ready within %s (--timeout)", o.timeout))
	defer cancel()

	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	// Every run starts from an empty cluster: tests must not see a previous run's objects.
	etcdDir := filepath.Join(o.dir, "etcd")
	if err := os.RemoveAll(etcdDir); err != nil {
		return err
	}
	pk, err := generatePKI(o.dir)
	if err != nil {
		return fmt.Errorf("generating PKI: %w", err)
	}

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdPort, etcdPeerPort, apiPort := ports[0], ports[1], ports[2]
	if o.etcdPort != 0 {
		etcdPort = o.etcdPort
	}
	if o.apiPort != 0 {
		apiPort = o.apiPort
	}
	server := "https://" + hostPort(apiPort)
	issuer := server

	authz := "RBAC"
	var nodeFlags []string
	if o.node {
		if p.node, nodeFlags, err = prepareNode(o.dir, pk, o.images); err != nil {
			return err
		}
		authz = "Node,RBAC" // as in a real cluster: a kubelet reads only what its pods need
	}

	etcdLog := filepath.Join(o.dir, "etcd.log")
	p.logs = append(p.logs, etcdLog)
	if p.etcd, err = startEtcd(ctx, etcdDir, etcdLog, etcdPort, etcdPeerPort); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	logf("etcd ready on %s after %s", hostPort(etcdPort), since(t0))

	if err := writeKubeconfig(o.kubeconfig, server, pk); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}

	apiLog := filepath.Join(o.dir, "apiserver.log")
	p.logs = append(p.logs, apiLog)
	p.apiserver, err = startChild("kube-apiserver", apiLog, append([]string{
		"--etcd-servers=http://" + hostPort(etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		// The default reconciler would try to publish 127.0.0.1 as the "kubernetes"
		// Service endpoint, which is rejected; there are no nodes to route to anyway.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(o.dir, "certs"), // unused (certs are given), but never /var/run
		"--tls-cert-file=" + pk.ServingCert,
		"--tls-private-key-file=" + pk.ServingKey,
		"--client-ca-file=" + pk.CACert,
		"--authorization-mode=" + authz,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=" + issuer,
		// The issuer (the API server's own audience) plus Entra's: tokens requested
		// without an audience stay valid for the API server itself.
		"--api-audiences=" + issuer + "," + azureAudience,
		"--service-account-signing-key-file=" + pk.SAKey,
		"--service-account-key-file=" + pk.SAPub,
		"--allow-privileged=true",
		"--profiling=false",
		// Admission plugins: the defaults, which include ServiceAccount,
		// MutatingAdmissionWebhook and ValidatingAdmissionWebhook. Unlike envtest we keep
		// ServiceAccount: its defaulting is part of what the webhook sees.
	}, append(nodeFlags, featureGateFlags(o.featureGates)...)...))
	if err != nil {
		return err
	}
	if err := p.waitReady(ctx, server, pk); err != nil {
		return err
	}
	logf("kube-apiserver ready on %s after %s", server, since(t0))

	clients, err := clientFor(o.kubeconfig)
	if err != nil {
		return err
	}
	p.clients = clients
	if err := p.retryWhileUp(ctx, func() error { return bindIssuerDiscovery(ctx, clients) }); err != nil {
		return fmt.Errorf("binding issuer discovery for anonymous users: %w", err)
	}

	if o.kcm {
		kcmLog := filepath.Join(o.dir, "kcm.log")
		p.logs = append(p.logs, kcmLog)
		controllers := kcmControllers
		if o.node {
			controllers += nodeControllers
		}
		p.kcm, err = startChild("kube-controller-manager", kcmLog, []string{
			"--kubeconfig=" + o.kubeconfig,
			"--controllers=" + controllers,
			"--leader-elect=false",
			"--secure-port=0",
			"--service-account-private-key-file=" + pk.SAKey,
			"--root-ca-file=" + pk.CACert,
		})
		if err != nil {
			return err
		}
		// Proof that the controllers run: what they create in "default" is what tests
		// rely on in every namespace.
		if err := p.retryWhileUp(ctx, func() error {
			if _, err := clients.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
				return err
			}
			_, err := clients.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
			return err
		}); err != nil {
			return fmt.Errorf("kube-controller-manager: %w", err)
		}
		logf("kube-controller-manager ready after %s", since(t0))
	}

	info := readyInfo{Kubeconfig: o.kubeconfig, Server: server, Issuer: issuer, CA: pk.CACert, Dir: o.dir}
	if o.node {
		if err := p.node.start(ctx, p, pk, server, apiPort, clients); err != nil {
			return fmt.Errorf("node: %w", err)
		}
		logf("node %s ready after %s (pod network %s on %s, gateway %s)",
			nodeName, since(t0), p.node.subnet, p.node.bridge, p.node.gateway)
		info.Node, info.PodCIDR, info.Gateway = nodeName, p.node.subnet.String(), p.node.gateway.String()
	}

	var line bytes.Buffer
	enc := json.NewEncoder(&line)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(info); err != nil {
		return err
	}
	// The only stdout output: one line, written with a single call (os.Stdout is unbuffered).
	if _, err := os.Stdout.WriteString("READY " + line.String()); err != nil {
		return err
	}
	logf("ready after %s", since(t0))

	return p.watch(stop)
}

// waitReady polls /readyz (as admin, so RBAC bootstrap is not needed to read it) until it
// answers 200, failing at once if the API server or etcd dies.
func (p *plane) waitReady(ctx context.Context, server string, pk *pki) error {
	caPEM, err := os.ReadFile(pk.CACert)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(pk.AdminCert, pk.AdminKey)
	if err != nil {
		return err
	}
	hc := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
		},
	}
	defer hc.CloseIdleConnections()
	last := "no answer yet"
	for {
		if err := p.failure(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		if resp, err := hc.Do(req); err != nil {
			if ctx.Err() == nil { // else the error only repeats the cancellation
				last = err.Error()
			}
		} else {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, failedChecks(string(body)))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver: %w (last /readyz: %s)", context.Cause(ctx), last)
		case <-p.apiserver.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// failedChecks keeps the "[-]check failed" lines of a /readyz body.
func failedChecks(body string) string {
	var failed []string
	for l := range strings.SplitSeq(body, "\n") {
		if strings.HasPrefix(l, "[-]") {
			failed = append(failed, strings.TrimSpace(l))
		}
	}
	if len(failed) == 0 {
		return strings.TrimSpace(body)
	}
	return strings.Join(failed, "; ")
}

// failure reports a component that died (or etcd reporting a fatal error).
func (p *plane) failure() error {
	children := []*child{p.apiserver, p.kcm}
	if p.node != nil {
		children = append(children, p.node.components()...)
	}
	for _, c := range children {
		if c != nil && c.exited() {
			return fmt.Errorf("%s exited: %v", c.name, c.err)
		}
	}
	if p.etcd != nil {
		select {
		case err := <-p.etcd.Err():
			return fmt.Errorf("etcd failed: %w", err)
		case <-p.etcd.Server.StopNotify():
			return errors.New("etcd stopped")
		default:
		}
	}
	return nil
}

// watch blocks after READY until a stop request or a component failure.
func (p *plane) watch(stop context.Context) error {
	done := func(c *child) <-chan struct{} {
		if c == nil {
			return nil // blocks forever
		}
		return c.done
	}
	nd := p.node
	if nd == nil {
		nd = &node{}
	}
	select {
	case <-stop.Done():
		return context.Cause(stop)
	case <-p.apiserver.done:
	case <-done(p.kcm):
	case <-done(nd.containerd):
	case <-done(nd.kubelet):
	case <-done(nd.scheduler):
	case err := <-p.etcd.Err():
		return fmt.Errorf("etcd failed: %w", err)
	case <-p.etcd.Server.StopNotify():
	}
	if err := p.failure(); err != nil {
		return err
	}
	return errors.New("a component stopped unexpectedly")
}

// shutdown stops components in reverse start order: clients of etcd before etcd.
func (p *plane) shutdown() {
	p.node.stop(p, p.clients)
	p.kcm.stop(childStopTimeout)
	p.apiserver.stop(childStopTimeout)
	if p.etcd != nil {
		stopEtcd(p.etcd)
		// etcd preallocates 64 MiB WAL segments; keep the logs but not the data.
		_ = os.RemoveAll(filepath.Join(p.opts.dir, "etcd"))
	}
}

func clientFor(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 5 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// bindIssuerDiscovery lets anyone read /.well-known/openid-configuration and
// /openid/v1/jwks, as Entra (or our emulator) fetches them without credentials. The
// bootstrap policy grants the role only to system:serviceaccounts.
func bindIssuerDiscovery(ctx context.Context, c *kubernetes.Clientset) error {
	_, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "wif-e2e:service-account-issuer-discovery:unauthenticated"},
		RoleRef: rbacv1.RoleRef{
			APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:service-account-issuer-discovery",
		},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:unauthenticated"}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// permanent wraps an error that retry must not retry.
type permanent struct{ error }

// retry calls f every 200 ms until it succeeds, fails permanently, or ctx ends.
func retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		if perm, ok := err.(permanent); ok {
			return perm.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", context.Cause(ctx), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// retryWhileUp is retry that also gives up as soon as a component dies.
func (p *plane) retryWhileUp(ctx context.Context, f func() error) error {
	return retry(ctx, func() error {
		if err := p.failure(); err != nil {
			return permanent{err}
		}
		return f()
	})
}

func since(t time.Time) time.Duration { return time.Since(t).Round(10 * time.Millisecond) }

// featureGateFlags passes --apiserver-feature-gates through, when given.
func featureGateFlags(gates string) []string {
	if gates == "" {
		return nil
	}
	return []string{"--feature-gates=" + gates}
}
