// Command idleconns measures what an idle, authenticated MQTT connection
// costs the fieldhub broker: it starts the broker in-process on
// 127.0.0.1:0 with an in-memory authenticator, opens N idle connections
// (raw MQTT 3.1.1 CONNECT, keepalive 60 s) and reports the broker
// process's heap, goroutine stack and RSS growth per connection.
//
// The clients run in a child process (this binary re-executed with
// -client), so their sockets, buffers and goroutines do not count against
// the broker. Measurements are taken after runtime.GC(); RSS is read from
// /proc/self/status after debug.FreeOSMemory().
//
//	go run ./internal/tools/idleconns -n 5000
package main

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/broker"
)

func main() {
	n := flag.Int("n", 5000, "idle connections to open")
	keepalive := flag.Int("keepalive", 60, "MQTT keepalive of the clients, seconds")
	client := flag.Bool("client", false, "internal: run as the client process")
	addr := flag.String("addr", "", "internal: broker address for -client")
	flag.Parse()

	var err error
	if *client {
		err = runClients(*addr, *n, uint16(*keepalive))
	} else {
		err = measure(*n, *keepalive)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(1)
	}
}

// mapAuth is an in-memory Authenticator: token = "tok-" + id.
type mapAuth map[string]string

func (m mapAuth) AuthenticateDevice(_ context.Context, id, token string) (bool, error) {
	want, ok := m[id]
	return ok && subtle.ConstantTimeCompare([]byte(want), []byte(token)) == 1, nil
}

type sample struct {
	heapAlloc, heapInuse, stackInuse, sys, rss uint64
	goroutines                                 int
}

func take() (sample, error) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err := vmRSS()
	return sample{heapAlloc: ms.HeapAlloc, heapInuse: ms.HeapInuse, stackInuse: ms.StackInuse, sys: ms.Sys,
		rss: rss, goroutines: runtime.NumGoroutine()}, err
}

func vmRSS() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("VmRSS not found in /proc/self/status")
}

func measure(n, keepalive int) error {
	auth := make(mapAuth, n)
	for i := range n {
		auth[fmt.Sprintf("dev-%d", i)] = fmt.Sprintf("tok-%d", i)
	}
	b, err := broker.New(broker.Config{Addr: "127.0.0.1:0", MaxClients: int64(n) + 10},
		broker.Deps{Auth: auth, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		return err
	}
	defer b.Stop(ctx)

	before, err := take()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-client", "-addr", b.Addrs().TCP, "-n", strconv.Itoa(n), "-keepalive", strconv.Itoa(keepalive))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		return fmt.Errorf("client process: %q %v", line, err)
	}
	// The broker finishes its side (session bookkeeping) right after the
	// CONNACK; wait until it sees every device.
	for i := range n {
		for !b.Connected(fmt.Sprintf("dev-%d", i)) {
			time.Sleep(time.Millisecond)
		}
	}
	connected := time.Since(start)
	time.Sleep(time.Second) // let the per-client goroutines settle
	after, err := take()
	if err != nil {
		return err
	}

	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	fmt.Printf("broker side of %d idle authenticated MQTT 3.1.1 connections (keepalive %ds, clients in a child process)\n", n, keepalive)
	fmt.Printf("connected in %s\n", connected.Round(time.Millisecond))
	fmt.Printf("%-28s %14s %14s %14s\n", "", "before", "after", "per conn")
	row := func(name string, a, b uint64) {
		fmt.Printf("%-28s %14d %14d %14.0f\n", name, a, b, per(b, a))
	}
	row("heap alloc (live, bytes)", before.heapAlloc, after.heapAlloc)
	row("heap in use (bytes)", before.heapInuse, after.heapInuse)
	row("goroutine stacks (bytes)", before.stackInuse, after.stackInuse)
	row("heap in use + stacks", before.heapInuse+before.stackInuse, after.heapInuse+after.stackInuse)
	row("Go runtime Sys (bytes)", before.sys, after.sys)
	row("VmRSS (bytes)", before.rss, after.rss)
	fmt.Printf("%-28s %14d %14d %14.2f\n", "goroutines", before.goroutines, after.goroutines,
		float64(after.goroutines-before.goroutines)/float64(n))
	return nil
}

// runClients opens n connections, prints "ready" once every CONNACK is
// in, and holds them until stdin closes.
func runClients(addr string, n int, keepalive uint16) error {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	buf := make([]byte, 4)
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("dial %d: %w", i, err)
		}
		conns = append(conns, c)
		id := fmt.Sprintf("dev-%d", i)
		if _, err := c.Write(connect(id, "tok-"+strconv.Itoa(i), keepalive)); err != nil {
			return fmt.Errorf("connect %d: %w", i, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			return fmt.Errorf("connack %d: %w", i, err)
		}
		if buf[0] != 0x20 || buf[3] != 0 {
			return fmt.Errorf("connack %d: % x", i, buf)
		}
		_ = c.SetReadDeadline(time.Time{})
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // hold until the parent is done
	return nil
}

// connect encodes an MQTT 3.1.1 CONNECT (clean session, user + password).
func connect(id, token string, keepalive uint16) []byte {
	str := func(b []byte, s string) []byte {
		return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
	}
	var v []byte
	v = str(v, "MQTT")
	v = append(v, 4, 0xC2) // level 4; username, password, clean session
	v = binary.BigEndian.AppendUint16(v, keepalive)
	v = str(v, id)
	v = str(v, id)
	v = str(v, token)
	return append([]byte{0x10, byte(len(v))}, v...) // < 128 bytes: one-byte length
}
