// Command controlplane runs a real Kubernetes control plane for wif's end-to-end tests:
// an embedded etcd plus kube-apiserver (and optionally kube-controller-manager), all
// compiled from the Kubernetes Go modules, so no Docker and no binary downloads.
//
//	controlplane up --dir DIR [--kubeconfig PATH] [--kcm] [--node [--images DIR]] [--timeout 60s]
//
// Once the API server is ready it prints one line on stdout,
//
//	READY {"kubeconfig":"…","server":"https://127.0.0.1:N","issuer":"…","ca":"DIR/ca.crt","dir":"…"}
//
// With --node it also runs a node (containerd, runc, a kubelet, kube-scheduler and a CNI
// bridge network of its own; node.go) and the READY line names it: "node", "podCIDR",
// "gateway" (the host's address on the pod network).
//
// and then runs until SIGTERM/SIGINT or until stdin reaches EOF.
//
// The API server and controller manager run as re-executed children of this same binary
// ("controlplane kube-apiserver …", "controlplane kube-controller-manager …"): their
// commands own process-wide state (flag sets, feature gates, metrics registries, signal
// handlers, os.Exit), which would clash with each other and with etcd in one process.
package main

import (
	"context"
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "up":
		os.Exit(up(os.Args[2:]))
	case "kube-apiserver":
		// Construct only the command being run: each constructor installs the
		// process's single signal handler (SetupSignalContext panics if called twice).
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(os.Args[2:]) // cobra would otherwise see "kube-apiserver" as a positional arg
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := kcm.NewControllerManagerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "kubelet":
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "image":
		os.Exit(imageMain(os.Args[2:]))
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "controlplane: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  controlplane up --dir DIR [--kubeconfig PATH] [--kcm] [--node [--images DIR]] [--timeout 60s] [--exit-on-stdin-eof=true]
  controlplane image --out FILE --name REF [--file SRC:DST[:MODE]]... [--pause DST] [--user UID:GID]
                     [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--label K=V]...   (an OCI archive)
  controlplane kube-apiserver [kube-apiserver flags]            (internal: run by "up")
  controlplane kube-controller-manager [kube-controller-manager flags]  (internal: run by "up")
  controlplane kube-scheduler [kube-scheduler flags]            (internal: run by "up --node")
  controlplane kubelet [kubelet flags]                          (internal: run by "up --node")
`)
}
