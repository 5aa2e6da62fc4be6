package devicesim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// FieldhubCLI drives the `fieldhub` command line on a data directory: it
// adds devices (DeviceAdder) and reads back what the hub stored and
// rejected (Hub). The CLI talks to a running `fieldhub serve` on the same
// data_dir through its HTTP API, or opens the files when none runs.
type FieldhubCLI struct {
	// Path of the fieldhub binary.
	Path string
	// DataDir is passed as --data-dir.
	DataDir string
	// Args are extra global flags (e.g. --config FILE).
	Args []string
	// Env is added to the environment (e.g. FIELDHUB_TOKEN=...).
	Env []string
}

func (c *FieldhubCLI) run(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{}, args...)
	if c.DataDir != "" {
		full = append(full, "--data-dir", c.DataDir)
	}
	full = append(full, c.Args...)
	cmd := exec.CommandContext(ctx, c.Path, full...)
	if len(c.Env) > 0 {
		cmd.Env = append(cmd.Environ(), c.Env...)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("fieldhub %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// AddDevice runs `fieldhub device add ID --type T --label k=v`, which
// prints only the new token.
func (c *FieldhubCLI) AddDevice(ctx context.Context, id, deviceType string, labels map[string]string) (string, error) {
	args := []string{"device", "add", id}
	if deviceType != "" {
		args = append(args, "--type", deviceType)
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--label", k+"="+labels[k])
	}
	out, err := c.run(ctx, args...)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(out))
	if tok == "" || strings.ContainsAny(tok, " \n") {
		return "", fmt.Errorf("fieldhub device add %s: unexpected output %q", id, out)
	}
	return tok, nil
}

// Point is one stored sample as the hub returns it.
type Point struct {
	TS    int64   `json:"ts"`
	Value float64 `json:"value"`
}

// Series runs `fieldhub telemetry query ID METRIC --from --to` (raw
// samples, both ends inclusive).
func (c *FieldhubCLI) Series(ctx context.Context, device, metric string, from, to time.Time) ([]Point, error) {
	out, err := c.run(ctx, "telemetry", "query", device, metric,
		"--from", strconv.FormatInt(from.UnixMilli(), 10), "--to", strconv.FormatInt(to.UnixMilli(), 10))
	if err != nil {
		return nil, err
	}
	var pts []Point
	if err := json.Unmarshal(out, &pts); err != nil {
		return nil, fmt.Errorf("fieldhub telemetry query: %w", err)
	}
	return pts, nil
}

// CountStored counts the samples of one metric of a device in [from, to].
func (c *FieldhubCLI) CountStored(ctx context.Context, device, metric string, from, to time.Time) (int, error) {
	pts, err := c.Series(ctx, device, metric, from, to)
	return len(pts), err
}

// DeadLetter is a rejected message as the hub lists it.
type DeadLetter struct {
	ID      int64  `json:"id"`
	Device  string `json:"device"`
	Topic   string `json:"topic"`
	Payload string `json:"payload"`
	Reason  string `json:"reason"`
	Detail  string `json:"detail"`
}

// DeadLetters runs `fieldhub deadletter list --all` (replayed ones too),
// for one device or, with device "", all.
func (c *FieldhubCLI) DeadLetters(ctx context.Context, device string, limit int) ([]DeadLetter, error) {
	args := []string{"deadletter", "list", "--all", "--limit", strconv.Itoa(limit)}
	if device != "" {
		args = append(args, "--device", device)
	}
	out, err := c.run(ctx, args...)
	if err != nil {
		return nil, err
	}
	var dls []DeadLetter
	if err := json.Unmarshal(out, &dls); err != nil {
		return nil, fmt.Errorf("fieldhub deadletter list: %w", err)
	}
	return dls, nil
}

// CountRejected counts the dead letters of the given devices.
func (c *FieldhubCLI) CountRejected(ctx context.Context, devices []string) (int, error) {
	dls, err := c.DeadLetters(ctx, "", 1_000_000)
	if err != nil {
		return 0, err
	}
	want := make(map[string]bool, len(devices))
	for _, d := range devices {
		want[d] = true
	}
	n := 0
	for _, dl := range dls {
		if want[dl.Device] {
			n++
		}
	}
	return n, nil
}
