package main

// "up --node": a real node beside the control plane. containerd (Debian's) with its own
// config, root, state and socket under DIR/node; runc; a kubelet and kube-scheduler re-executed
// from this binary; a CNI bridge network (Debian's bridge + host-local plugins) whose bridge,
// nftables table and addresses exist only for this run.
//
// Pod network: a /24 of 10.244.0.0/16 not used on this machine, on a bridge of our own; the
// host is its gateway. Pods get routes to that /24 and to the Service range only (no default
// route), and the run's nftables table drops anything forwarded to or from the bridge, so no
// pod packet ever leaves the machine. Pods reach the API server through the "kubernetes"
// Service as in a real cluster: the table DNATs 10.0.0.1:443 arriving on the bridge to the API
// server on 127.0.0.1 (route_localnet on our bridge only). That one rule is all kube-proxy
// would do here, and kube-proxy would also install cluster-wide chains and need the API
// server on a non-loopback address; the webhook Services need no proxy, the API server
// resolves them to endpoints (--enable-aggregator-routing).
//
// Teardown (also after a failed start) leaves the machine as it was: pods are deleted while
// the kubelet runs, then kubelet, leftover containers, shims (by PID), containerd; mounts under
// the run directory and the network namespaces the run created are unmounted; the cgroups, the
// bridge, the nftables table and the host directories the run created are removed; sysctls the
// kubelet or the bridge plugin changed are restored.

import (
	"bufio"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const (
	nodeName = "wif-e2e-node"
	// pauseImage is the sandbox image containerd is told to use; `make images` builds it.
	pauseImage  = "localhost/wif-e2e/pause:1"
	kubeletPort = 10250 // on the bridge's address, which belongs to this run alone
	cniBinDir   = "/usr/lib/cni"
	nodeLock    = "/run/lock/wif-e2e-node.lock"
	installHint = "apt-get install containerd runc containernetworking-plugins nftables"
)

// sysctlsTouched are the kernel settings the kubelet (and the bridge plugin: ip_forward) set.
var sysctlsTouched = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
}

// hostDirs are paths the kubelet, containerd or CNI create outside --root-dir and our config;
// those that did not exist before the run are removed after it.
var hostDirs = []string{
	"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd",
	"/var/lib/cni", "/run/netns", "/var/run/netns", "/opt/containerd", "/etc/kubernetes",
}

// cgroupNames are what the kubelet (cgroupfs driver) and containerd create in each hierarchy.
var cgroupNames = []string{"kubepods", "k8s.io"}

type node struct {
	dir, server string
	apiPort     int
	images      string
	bridge      string
	subnet      *net.IPNet
	gateway     net.IP
	table       string

	sock       string
	containerd *child
	kubelet    *child
	scheduler  *child
	lock       *os.File
	lockHeld   bool

	// Recorded before touching anything, restored or removed by stop.
	sysctls       map[string]string
	existed       map[string]bool // host paths, cgroups and netns entries present before
	nftTables     map[string]bool
	bridgeCreated bool
	tableCreated  bool

	nodeCert, nodeKey, servingCert, servingKey, apiClientCert, apiClientKey string
}

// prepareNode checks what the node needs, picks its network and writes its certificates;
// it changes nothing on the machine. apiFlags are added to kube-apiserver's.
func prepareNode(dir string, pk *pki, images string) (*node, []string, error) {
	if os.Geteuid() != 0 {
		return nil, nil, errors.New("node: a kubelet and containerd need root")
	}
	for _, prog := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "nft", "ip"} {
		if _, err := exec.LookPath(prog); err != nil {
			return nil, nil, fmt.Errorf("node: %s not found (%s)", prog, installHint)
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, plugin)); err != nil {
			return nil, nil, fmt.Errorf("node: CNI plugin %s not found in %s (%s)", plugin, cniBinDir, installHint)
		}
	}
	if images != "" {
		if st, err := os.Stat(images); err != nil || !st.IsDir() {
			return nil, nil, fmt.Errorf("node: --images %s is not a directory", images)
		}
	}
	n := &node{dir: filepath.Join(dir, "node"), images: images}
	if err := os.MkdirAll(filepath.Join(n.dir, "pki"), 0o755); err != nil {
		return nil, nil, err
	}
	var err error
	if n.subnet, err = freeSubnet(); err != nil {
		return nil, nil, err
	}
	n.gateway = slices.Clone(n.subnet.IP.To4())
	n.gateway[3] = 1
	suffix := fmt.Sprintf("%04x", rand.N(0x10000))
	n.bridge = "wifbr" + suffix
	n.table = "wif_e2e_" + suffix
	n.sock = filepath.Join(n.dir, "containerd", "containerd.sock")

	p := func(f string) string { return filepath.Join(n.dir, "pki", f) }
	n.nodeCert, n.nodeKey = p("kubelet-client.crt"), p("kubelet-client.key")
	n.servingCert, n.servingKey = p("kubelet-serving.crt"), p("kubelet-serving.key")
	n.apiClientCert, n.apiClientKey = p("apiserver-kubelet-client.crt"), p("apiserver-kubelet-client.key")
	if err := pk.issue(n.nodeCert, n.nodeKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, nil, err
	}
	if err := pk.issue(n.servingCert, n.servingKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: nodeName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{n.gateway},
		DNSNames:    []string{nodeName},
	}); err != nil {
		return nil, nil, err
	}
	// The API server's identity towards kubelets (logs, exec): the kubelet authenticates it by
	// the CA and asks the API server (SubjectAccessReview) whether it may.
	if err := pk.issue(n.apiClientCert, n.apiClientKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "wif-e2e-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, nil, err
	}
	return n, []string{
		"--kubelet-client-certificate=" + n.apiClientCert,
		"--kubelet-client-key=" + n.apiClientKey,
		"--kubelet-certificate-authority=" + pk.CACert,
		"--kubelet-preferred-address-types=InternalIP",
		// Webhook Services resolve to their pods' addresses, reachable on the bridge.
		"--enable-aggregator-routing=true",
		"--enable-admission-plugins=NodeRestriction",
	}, nil
}

// freeSubnet is a 10.244.X.0/24 that overlaps no route and no address of this machine.
func freeSubnet() (*net.IPNet, error) {
	var used []*net.IPNet
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				used = append(used, ipn)
			}
		}
	}
	if f, err := os.Open("/proc/net/route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 8 || fs[0] == "Iface" {
				continue
			}
			dst, err1 := strconv.ParseUint(fs[1], 16, 32)
			mask, err2 := strconv.ParseUint(fs[7], 16, 32)
			if err1 != nil || err2 != nil || mask == 0 { // the default route overlaps everything
				continue
			}
			le := func(v uint64) net.IP { return net.IPv4(byte(v), byte(v>>8), byte(v>>16), byte(v>>24)) }
			used = append(used, &net.IPNet{IP: le(dst).To4(), Mask: net.IPMask(le(mask).To4())})
		}
		f.Close()
	}
	for _, x := range rand.Perm(256) {
		cand := &net.IPNet{IP: net.IPv4(10, 244, byte(x), 0).To4(), Mask: net.CIDRMask(24, 32)}
		if !slices.ContainsFunc(used, func(u *net.IPNet) bool { return u.Contains(cand.IP) || cand.Contains(u.IP) }) {
			return cand, nil
		}
	}
	return nil, errors.New("node: no free /24 in 10.244.0.0/16 for the pod network")
}

// start brings the node up; on error the caller still calls stop.
func (n *node) start(ctx context.Context, p *plane, pk *pki, server string, apiPort int, clients *kubernetes.Clientset) error {
	n.server, n.apiPort = server, apiPort
	lock, err := os.OpenFile(nodeLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return fmt.Errorf("node: another `controlplane up --node` runs on this machine (%s is locked): "+
			"one node per machine (the kubelet's cgroups and device-plugin socket are machine-wide)", nodeLock)
	}
	n.lock, n.lockHeld = lock, true

	n.record()
	if err := n.network(); err != nil {
		return fmt.Errorf("node: pod network: %w", err)
	}
	if err := n.startContainerd(ctx, p); err != nil {
		return err
	}
	if err := n.importImages(ctx); err != nil {
		return err
	}
	if err := n.startKubelet(pk); err != nil {
		return err
	}
	p.logs = append(p.logs, n.kubelet.logPath)
	schedLog := filepath.Join(n.dir, "scheduler.log")
	if n.scheduler, err = startChild("kube-scheduler", schedLog, []string{
		"--kubeconfig=" + p.opts.kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
	}); err != nil {
		return err
	}
	p.logs = append(p.logs, schedLog)
	// Ready = registered, its runtime and network ready (the CNI config exists).
	return p.retryWhileUp(ctx, func() error {
		nd, err := clients.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range nd.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				return fmt.Errorf("node %s not Ready: %s: %s", nodeName, c.Reason, c.Message)
			}
		}
		if !slices.ContainsFunc(nd.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == corev1.NodeReady }) {
			return fmt.Errorf("node %s has no Ready condition yet", nodeName)
		}
		// Schedulable: the node lifecycle controller has lifted the taints the kubelet
		// registered with.
		for _, t := range nd.Spec.Taints {
			if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
				return fmt.Errorf("node %s still has taint %s", nodeName, t.Key)
			}
		}
		return nil
	})
}

// components are the node's processes, for failure checks.
func (n *node) components() []*child { return []*child{n.containerd, n.kubelet, n.scheduler} }

func (n *node) record() {
	n.sysctls = map[string]string{}
	for _, k := range sysctlsTouched {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			n.sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	n.existed = map[string]bool{}
	for _, d := range hostDirs {
		if _, err := os.Lstat(d); err == nil {
			n.existed[d] = true
		}
	}
	for _, nsDir := range []string{"/run/netns", "/var/run/netns"} {
		entries, _ := os.ReadDir(nsDir)
		for _, e := range entries {
			n.existed[filepath.Join(nsDir, e.Name())] = true
		}
	}
	for _, c := range cgroupPaths() {
		if _, err := os.Stat(c); err == nil {
			n.existed[c] = true
		}
	}
	n.nftTables = nftTables()
	if b, err := json.MarshalIndent(map[string]any{"sysctls": n.sysctls, "existed": n.existed}, "", "  "); err == nil {
		_ = os.WriteFile(filepath.Join(n.dir, "recorded.json"), b, 0o644)
	}
}

func cgroupPaths() []string {
	var out []string
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		hier = []string{"/sys/fs/cgroup"} // cgroup v2 only
	}
	for _, h := range hier {
		for _, c := range cgroupNames {
			out = append(out, filepath.Join(h, c))
		}
	}
	return out
}

// nftTables lists "family name" of every nftables table.
func nftTables() map[string]bool {
	out, _ := exec.Command("nft", "list", "tables").Output()
	t := map[string]bool{}
	for l := range strings.SplitSeq(string(out), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "table "); ok {
			t[rest] = true
		}
	}
	return t
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (n *node) network() error {
	prefix, _ := n.subnet.Mask.Size()
	if err := run("ip", "link", "add", "name", n.bridge, "type", "bridge"); err != nil {
		return err
	}
	n.bridgeCreated = true
	if err := run("ip", "addr", "add", fmt.Sprintf("%s/%d", n.gateway, prefix), "dev", n.bridge); err != nil {
		return err
	}
	if err := run("ip", "link", "set", n.bridge, "up"); err != nil {
		return err
	}
	// Lets the DNAT below deliver to 127.0.0.1 packets that arrived on this bridge (and only it).
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+n.bridge+"/route_localnet", []byte("1"), 0o644); err != nil {
		return err
	}
	rules := fmt.Sprintf(`table ip %[1]s {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "%[2]s" ip daddr %[3]s tcp dport 443 dnat to 127.0.0.1:%[4]d
	}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname "%[2]s" drop
		oifname "%[2]s" drop
	}
}
`, n.table, n.bridge, kubernetesServiceIP, n.apiPort)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, out)
	}
	n.tableCreated = true

	cni := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "wif-e2e",
		"plugins": []map[string]any{{
			"type": "bridge", "bridge": n.bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": n.subnet.String(), "gateway": n.gateway.String()}}},
				"routes":  []map[string]string{{"dst": "10.0.0.0/24", "gw": n.gateway.String()}},
				"dataDir": filepath.Join(n.dir, "cni", "ipam"),
			},
		}},
	}
	b, err := json.MarshalIndent(cni, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(n.dir, "cni", "net.d"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(n.dir, "cni", "net.d", "10-wif-e2e.conflist"), b, 0o644)
}

func (n *node) startContainerd(ctx context.Context, p *plane) error {
	cd := filepath.Join(n.dir, "containerd")
	if err := os.MkdirAll(cd, 0o755); err != nil {
		return err
	}
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # This machine drops CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[6]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
  # Every registry resolves to a closed loopback port: an image that was not imported fails
  # to pull (ErrImagePull) instead of sending traffic off this machine.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %[9]q
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), n.sock, n.sock+".ttrpc", pauseImage,
		filepath.Join(cd, "runc"), cniBinDir, filepath.Join(n.dir, "cni", "net.d"), filepath.Join(cd, "certs.d"))
	if err := os.MkdirAll(filepath.Join(cd, "certs.d", "_default"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cd, "certs.d", "_default", "hosts.toml"), []byte(
		"server = \"https://127.0.0.1:1\"\n\n[host.\"https://127.0.0.1:1\"]\n  capabilities = [\"pull\", \"resolve\"]\n"), 0o644); err != nil {
		return err
	}
	cfgPath := filepath.Join(cd, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}
	log := filepath.Join(n.dir, "containerd.log")
	p.logs = append(p.logs, log)
	var err error
	if n.containerd, err = startProcess("containerd", log, "containerd", []string{"--config", cfgPath}, nil); err != nil {
		return err
	}
	return p.retryWhileUp(ctx, func() error {
		// Serving the CRI: the plugin n.kubelet talks to.
		out, err := exec.CommandContext(ctx, "ctr", "--address", n.sock, "plugins", "ls", "id==cri").CombinedOutput()
		if err != nil {
			return fmt.Errorf("containerd not serving on %s yet: %v", n.sock, err)
		}
		if !strings.Contains(string(out), "ok") {
			return fmt.Errorf("containerd's cri plugin is not ok: %s", out)
		}
		return nil
	})
}

// importImages imports every *.tar of --images into the namespace the CRI uses.
func (n *node) importImages(ctx context.Context) error {
	if n.images == "" {
		return nil
	}
	archives, err := filepath.Glob(filepath.Join(n.images, "*.tar"))
	if err != nil {
		return err
	}
	if len(archives) == 0 {
		return fmt.Errorf("node: --images %s holds no *.tar (run `make images`)", n.images)
	}
	for _, a := range archives {
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, "ctr", "--address", n.sock, "-n", "k8s.io", "images", "import", a).CombinedOutput()
		if err != nil {
			return fmt.Errorf("node: importing %s: %v: %s", a, err, out)
		}
		logf("imported %s in %s: %s", filepath.Base(a), since(t0), strings.TrimSpace(string(out)))
	}
	return nil
}

func (n *node) startKubelet(pk *pki) error {
	kd := filepath.Join(n.dir, "kubelet")
	if err := os.MkdirAll(kd, 0o755); err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.dir, "kubelet.kubeconfig")
	if err := writeKubeconfigFor(kubeconfig, n.server, pk.CACert, "system:node:"+nodeName, n.nodeCert, n.nodeKey); err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1 (kubelet >= 1.35 refuses it unless told) and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://%[1]s
address: %[2]s
port: %[3]d
readOnlyPort: 0
healthzPort: 0
tlsCertFile: %[4]s
tlsPrivateKeyFile: %[5]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[6]s}
authorization:
  mode: Webhook
podLogsDir: %[7]s
volumePluginDir: %[8]s
# No DNS for pods: nothing they could resolve is on this machine.
resolvConf: ""
evictionHard: {memory.available: "0%%", nodefs.available: "0%%", imagefs.available: "0%%", nodefs.inodesFree: "0%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 2s
serializeImagePulls: false
`, n.sock, n.gateway, kubeletPort, n.servingCert, n.servingKey, pk.CACert,
		filepath.Join(n.dir, "pod-logs"), filepath.Join(n.dir, "volume-plugins"))
	cfgPath := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}
	// PATH without /usr/sbin: the kubelet then finds no iptables and leaves the machine's
	// firewall alone (KUBE-FIREWALL, canary chains); it needs none of /usr/sbin.
	env := append(slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "PATH=") }),
		"PATH=/usr/local/bin:/usr/bin:/bin")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	n.kubelet, err = startProcess("kubelet", filepath.Join(n.dir, "kubelet.log"), self, []string{
		"kubelet",
		"--config=" + cfgPath,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + kd,
		"--hostname-override=" + nodeName,
		"--node-ip=" + n.gateway.String(),
		"--v=1",
	}, env)
	return err
}

// stop tears the node down; safe on a partial start and to call once.
func (n *node) stop(p *plane, clients *kubernetes.Clientset) {
	if n == nil {
		return
	}
	t0 := time.Now()
	// No new pods: controllers and the scheduler stop first, then every pod is deleted while
	// the kubelet still runs (it stops sandboxes, unmounts volumes, releases addresses).
	n.scheduler.stop(childStopTimeout)
	p.kcm.stop(childStopTimeout)
	if clients != nil && n.kubelet != nil && !n.kubelet.exited() && p.apiserver != nil && !p.apiserver.exited() {
		n.deletePods(clients)
	}
	n.kubelet.stop(childStopTimeout)
	if n.containerd != nil && !n.containerd.exited() {
		n.killTasks()
	}
	n.killShims()
	n.containerd.stop(childStopTimeout)
	n.killShims()
	n.unmountUnder(n.dir)
	if n.existed == nil { // nothing on the machine was touched (e.g. another node holds the lock)
		if n.lock != nil && n.lockHeld {
			_ = os.Remove(nodeLock)
		}
		if n.lock != nil {
			n.lock.Close()
		}
		return
	}
	for _, nsDir := range []string{"/run/netns", "/var/run/netns"} {
		entries, _ := os.ReadDir(nsDir)
		for _, e := range entries {
			path := filepath.Join(nsDir, e.Name())
			if !n.existed[path] && strings.HasPrefix(e.Name(), "cni-") {
				_ = syscall.Unmount(path, syscall.MNT_DETACH)
				_ = os.Remove(path)
			}
		}
	}
	for _, c := range cgroupPaths() {
		if !n.existed[c] {
			removeCgroupTree(c)
		}
	}
	if n.tableCreated {
		if err := run("nft", "delete", "table", "ip", n.table); err != nil {
			logf("node teardown: %v", err)
		}
	}
	// Tables someone else (iptables-nft called by a component) created during the run.
	if n.nftTables != nil {
		for t := range nftTables() {
			if !n.nftTables[t] {
				logf("node teardown: removing nftables table %s created during the run", t)
				_ = run("nft", append([]string{"delete", "table"}, strings.Fields(t)...)...)
			}
		}
	}
	if n.bridgeCreated {
		if err := run("ip", "link", "del", n.bridge); err != nil {
			logf("node teardown: %v", err)
		}
	}
	for k, v := range n.sysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil && strings.TrimSpace(string(b)) != v {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				logf("node teardown: restoring %s=%s: %v", k, v, err)
			}
		}
	}
	for _, d := range hostDirs {
		if !n.existed[d] {
			n.unmountUnder(d)
			_ = os.RemoveAll(d)
		}
	}
	// containerd's state and snapshots: mounts are gone, the bytes are not worth keeping.
	_ = os.RemoveAll(filepath.Join(n.dir, "containerd"))
	_ = os.RemoveAll(filepath.Join(n.dir, "kubelet"))
	if n.lock != nil {
		_ = os.Remove(nodeLock)
		n.lock.Close()
	}
	logf("node torn down in %s", since(t0))
}

func (n *node) deletePods(clients *kubernetes.Clientset) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	grace := int64(1)
	nss, err := clients.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		logf("node teardown: listing namespaces: %v", err)
		return
	}
	for _, ns := range nss.Items {
		_ = clients.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &grace},
			metav1.ListOptions{})
	}
	for ctx.Err() == nil {
		pods, err := clients.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	logf("node teardown: pods still present after 30 s; removing them through containerd")
}

func (n *node) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

// killTasks kills and deletes whatever containers the kubelet left.
func (n *node) killTasks() {
	out, err := n.ctr("tasks", "ls", "-q")
	if err != nil {
		return
	}
	for id := range strings.FieldsSeq(out) {
		_, _ = n.ctr("tasks", "kill", "-s", "SIGKILL", id)
		_, _ = n.ctr("tasks", "delete", "-f", id)
		_, _ = n.ctr("containers", "delete", id)
	}
}

// killShims SIGKILLs by PID the runc shims of this run's containerd (they are daemons, not
// our children), found by the socket address on their command line.
func (n *node) killShims() {
	procs, _ := os.ReadDir("/proc")
	for _, pr := range procs {
		pid, err := strconv.Atoi(pr.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", pr.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if strings.HasSuffix(args[0], "containerd-shim-runc-v2") && slices.Contains(args, n.sock) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount at or below root, deepest first.
func (n *node) unmountUnder(root string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		mp := unescapeMount(fs[4])
		if mp == root || strings.HasPrefix(mp, root+"/") {
			mounts = append(mounts, mp)
		}
	}
	f.Close()
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			logf("node teardown: unmount %s: %v", m, err)
		}
	}
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// removeCgroupTree removes a cgroup directory and its children, deepest first (cgroupfs
// refuses rmdir of a cgroup with children or processes; ours have none by now).
func removeCgroupTree(root string) {
	var dirs []string
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for range 20 { // a just-killed process may take a moment to leave its cgroup
			if err = syscall.Rmdir(dirs[i]); err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			logf("node teardown: rmdir %s: %v", dirs[i], err)
		}
	}
}
