package main

// "controlplane image" writes a single-layer OCI image archive (the layout `ctr images
// import` reads) from files on this machine: no Docker engine and no registry. The archive is
// reproducible (fixed times, sorted entries, root-owned), so the same inputs give the same
// digest.

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// layerEntry is one file or directory of the image's only layer.
type layerEntry struct {
	name string // absolute path in the image
	dir  bool
	mode int64
	data []byte
}

func imageMain(args []string) int {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	var out, name, user, entrypoint, cmd, pause string
	var files, dirs, envs, labels multiFlag
	fs.StringVar(&out, "out", "", "archive to write (required)")
	fs.StringVar(&name, "name", "", "image reference, e.g. ghcr.io/wif-dev/wif:0.1.0 (required)")
	fs.Var(&files, "file", "SRC:DST[:MODE] a file of this machine copied to DST (octal MODE, default 0755)")
	fs.Var(&dirs, "dir", "DST[:MODE] an empty directory (octal MODE, default 0755)")
	fs.StringVar(&pause, "pause", "", "DST: a tiny static x86-64 program that sleeps until killed (a pod sandbox)")
	fs.StringVar(&user, "user", "", "the image's User (UID:GID)")
	fs.StringVar(&entrypoint, "entrypoint", "", `Entrypoint as a JSON array, e.g. ["/wif"]`)
	fs.StringVar(&cmd, "cmd", "", `Cmd as a JSON array, e.g. ["--help"]`)
	fs.Var(&envs, "env", "K=V environment of the image")
	fs.Var(&labels, "label", "K=V label of the image")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if out == "" || name == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "controlplane image: --out and --name are required")
		return 2
	}
	if err := writeImage(out, name, user, entrypoint, cmd, pause, files, dirs, envs, labels); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane image: %s: %v\n", name, err)
		return 1
	}
	return 0
}

func writeImage(out, name, user, entrypoint, cmd, pause string, files, dirs, envs, labels []string) error {
	var entries []layerEntry
	for _, f := range files {
		parts := strings.Split(f, ":")
		if len(parts) < 2 || len(parts) > 3 || !path.IsAbs(parts[1]) {
			return fmt.Errorf("--file %q: want SRC:/DST[:MODE]", f)
		}
		data, err := os.ReadFile(parts[0])
		if err != nil {
			return fmt.Errorf("--file %q: %w", f, err)
		}
		mode := int64(0o755)
		if len(parts) == 3 {
			if mode, err = strconv.ParseInt(parts[2], 8, 32); err != nil {
				return fmt.Errorf("--file %q: MODE: %w", f, err)
			}
		}
		entries = append(entries, layerEntry{name: path.Clean(parts[1]), mode: mode, data: data})
	}
	for _, d := range dirs {
		dst, modeText, _ := strings.Cut(d, ":")
		mode := int64(0o755)
		if modeText != "" {
			var err error
			if mode, err = strconv.ParseInt(modeText, 8, 32); err != nil {
				return fmt.Errorf("--dir %q: MODE: %w", d, err)
			}
		}
		if !path.IsAbs(dst) {
			return fmt.Errorf("--dir %q: not an absolute path", d)
		}
		entries = append(entries, layerEntry{name: path.Clean(dst), dir: true, mode: mode})
	}
	if pause != "" {
		entries = append(entries, layerEntry{name: path.Clean(pause), mode: 0o755, data: pauseELF()})
	}
	layer, err := layerTar(entries)
	if err != nil {
		return err
	}

	cfg := map[string]any{}
	if user != "" {
		cfg["User"] = user
	}
	for flagName, v := range map[string]string{"Entrypoint": entrypoint, "Cmd": cmd} {
		if v == "" {
			continue
		}
		var arr []string
		if err := json.Unmarshal([]byte(v), &arr); err != nil {
			return fmt.Errorf("--%s %q: not a JSON array of strings: %w", strings.ToLower(flagName), v, err)
		}
		cfg[flagName] = arr
	}
	if len(envs) > 0 {
		cfg["Env"] = envs
	}
	if len(labels) > 0 {
		m := map[string]string{}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return fmt.Errorf("--label %q: want K=V", l)
			}
			m[k] = v
		}
		cfg["Labels"] = m
	}
	layerDigest := digestOf(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		"history":      []map[string]string{{"created_by": "controlplane image (wif e2e)"}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{
			"mediaType": "application/vnd.oci.image.config.v1+json",
			"digest":    digestOf(config), "size": len(config),
		},
		"layers": []map[string]any{{
			"mediaType": "application/vnd.oci.image.layer.v1.tar",
			"digest":    layerDigest, "size": len(layer),
		}},
	})
	if err != nil {
		return err
	}
	tag := name
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		tag = name[i+1:]
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    digestOf(manifest), "size": len(manifest),
			"platform": map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{
				"io.containerd.image.name":          name,
				"org.opencontainers.image.ref.name": tag,
			},
		}},
	})
	if err != nil {
		return err
	}

	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)),
			ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, b := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(layer), layer},
		{blobPath(config), config},
		{blobPath(manifest), manifest},
	} {
		if err := add(b.name, b.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, archive.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// layerTar is the layer: every parent directory, then the entries, sorted, root-owned.
func layerTar(entries []layerEntry) ([]byte, error) {
	all := map[string]layerEntry{}
	for _, e := range entries {
		for d := path.Dir(e.name); d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = layerEntry{name: d, dir: true, mode: 0o755}
			}
		}
		all[e.name] = e
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := all[n]
		h := &tar.Header{Name: strings.TrimPrefix(n, "/"), Mode: e.mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if !e.dir {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(b []byte) string {
	sum := sha256.Sum256(b)
	return "blobs/sha256/" + hex.EncodeToString(sum[:])
}

// pauseELF is a complete static x86-64 Linux program of 129 bytes: `for (;;) pause();`.
// A pod sandbox only has to hold its namespaces until the runtime kills it (SIGKILL), so this
// is all the pause image needs; it is generated rather than downloaded or compiled.
func pauseELF() []byte {
	const base = 0x400000
	code := []byte{
		0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34 (pause)
		0x0f, 0x05, // syscall
		0xeb, 0xf7, // jmp back to mov
	}
	const ehsize, phsize = 64, 56
	total := uint64(ehsize + phsize + len(code))
	var b bytes.Buffer
	le := binary.LittleEndian
	w := func(v any) { _ = binary.Write(&b, le, v) }
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	w(uint16(2))                      // e_type: EXEC
	w(uint16(0x3e))                   // e_machine: x86-64
	w(uint32(1))                      // e_version
	w(uint64(base + ehsize + phsize)) // e_entry
	w(uint64(ehsize))                 // e_phoff
	w(uint64(0))                      // e_shoff
	w(uint32(0))                      // e_flags
	w(uint16(ehsize))                 // e_ehsize
	w(uint16(phsize))                 // e_phentsize
	w(uint16(1))                      // e_phnum
	w(uint16(0))                      // e_shentsize
	w(uint16(0))                      // e_shnum
	w(uint16(0))                      // e_shstrndx
	w(uint32(1))                      // p_type: LOAD
	w(uint32(5))                      // p_flags: R+X
	w(uint64(0))                      // p_offset
	w(uint64(base))                   // p_vaddr
	w(uint64(base))                   // p_paddr
	w(total)                          // p_filesz
	w(total)                          // p_memsz
	w(uint64(0x1000))                 // p_align
	b.Write(code)
	return b.Bytes()
}
