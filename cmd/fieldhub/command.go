package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/registry"
)

// Exit codes of `command send --wait` for a command that did not succeed
// (1 stays "fieldhub itself failed").
const (
	exitCommandFailed    = 2
	exitCommandExpired   = 3
	exitCommandCancelled = 4
)

// hubFor finds the running hub; commands and twins go through it, since
// its broker delivers them and its service keeps their timers.
func (a *app) hubFor(cmd *cobra.Command) (*hubAPI, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	api, err := runningHub(cmd.Context(), cfg)
	if errors.Is(err, errNoHub) {
		return nil, fmt.Errorf("no hub is running on data_dir %s: commands and twins need a running `fieldhub serve` (its broker delivers them)", cfg.DataDir)
	}
	return api, err
}

// send is do with a JSON request body; it returns the response status.
func (c *hubAPI) send(ctx context.Context, method, path string, q url.Values, in, out any) (int, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("hub API: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("hub API: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string }
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			return resp.StatusCode, fmt.Errorf("%s (%s)", e.Error.Message, e.Error.Code)
		}
		return resp.StatusCode, fmt.Errorf("hub API %s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("hub API %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

func newCommandCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:     "command",
		Aliases: []string{"commands", "cmd"},
		Short:   "Send commands to devices and follow them (needs a running hub)",
		Long: `Send commands to devices and follow them through the ledger:
queued -> sent -> delivered -> succeeded | failed, or expired | cancelled.
These talk to the running hub's HTTP API (found through data_dir/hub.json,
with the admin token from data_dir/admin.token or FIELDHUB_TOKEN).`,
	}

	var params, key string
	var timeout time.Duration
	var wait bool
	send := &cobra.Command{
		Use:   "send ID NAME",
		Short: "Send a command to a device and print it (JSON)",
		Long: `Send command NAME to device ID. It is published on devices/ID/commands/NAME
at QoS 1 if the device is connected and subscribed, else queued until it
subscribes. --timeout bounds the whole command (delivery and reply); the
hub's commands.default_timeout applies when it is not given. Sending again
with the same --key returns the first command instead of a new one.

With --wait the command prints the command once it is final and exits
with 0 if it succeeded, 2 if it failed, 3 if it expired, 4 if it was
cancelled (1 means fieldhub itself failed).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			req := dashboard.SendCommandRequest{Name: args[1], IdempotencyKey: key}
			if params != "" {
				if !json.Valid([]byte(params)) {
					return fmt.Errorf("--params %q is not valid JSON", params)
				}
				req.Params = json.RawMessage(params)
			}
			if timeout < 0 {
				return fmt.Errorf("--timeout %s is negative", timeout)
			}
			if timeout > 0 {
				req.Timeout = timeout.String()
			}
			api, err := a.hubFor(cmd)
			if err != nil {
				return err
			}
			var v dashboard.CommandView
			if _, err := api.send(ctx, "POST", "/api/v1/devices/"+url.PathEscape(args[0])+"/commands", nil, req, &v); err != nil {
				return err
			}
			if !wait {
				return writeJSONOut(a, v)
			}
			for !v.Final {
				if _, err := api.send(ctx, "GET", "/api/v1/commands/"+url.PathEscape(v.ID)+"/wait", url.Values{"timeout": {"30s"}}, nil, &v); err != nil {
					return err
				}
			}
			if err := writeJSONOut(a, v); err != nil {
				return err
			}
			return exitFor(v.State)
		},
	}
	send.Flags().StringVar(&params, "params", "", `parameters, a JSON object (e.g. '{"level": 3}')`)
	send.Flags().DurationVar(&timeout, "timeout", 0, "time until the command expires (default: commands.default_timeout)")
	send.Flags().StringVar(&key, "key", "", "idempotency key: a second send with the same key returns the first command")
	send.Flags().BoolVar(&wait, "wait", false, "wait until the command is final; the exit code tells how it ended")

	var limit int
	var before string
	list := &cobra.Command{
		Use:   "list ID",
		Short: "List a device's commands, newest first (JSON)",
		Long: `List a device's commands, newest first, as a JSON array. For the next page
pass --before with the created_at of the last one printed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, err := a.hubFor(cmd)
			if err != nil {
				return err
			}
			q := url.Values{"limit": {fmt.Sprint(limit)}}
			if before != "" {
				q.Set("before", before)
			}
			var out []dashboard.CommandView
			if _, err := api.send(cmd.Context(), "GET", "/api/v1/devices/"+url.PathEscape(args[0])+"/commands", q, nil, &out); err != nil {
				return err
			}
			return writeJSONOut(a, out)
		},
	}
	list.Flags().IntVar(&limit, "limit", 100, "at most this many (1-1000)")
	list.Flags().StringVar(&before, "before", "", "only commands created before this RFC 3339 time")

	show := &cobra.Command{
		Use:   "show CMDID",
		Short: "Print a command with its history of state changes (JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, err := a.hubFor(cmd)
			if err != nil {
				return err
			}
			var v dashboard.CommandView
			if _, err := api.send(cmd.Context(), "GET", "/api/v1/commands/"+url.PathEscape(args[0]), nil, nil, &v); err != nil {
				return err
			}
			return writeJSONOut(a, v)
		},
	}

	cancel := &cobra.Command{
		Use:   "cancel CMDID",
		Short: "Cancel a command that is not final yet",
		Long: `Cancel a queued, sent or delivered command and print it. A command the device
already received may still be carried out; its reply is then ignored.
Fails if the command is already final.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, err := a.hubFor(cmd)
			if err != nil {
				return err
			}
			var v dashboard.CommandView
			if _, err := api.send(cmd.Context(), "POST", "/api/v1/commands/"+url.PathEscape(args[0])+"/cancel", nil, nil, &v); err != nil {
				return err
			}
			return writeJSONOut(a, v)
		},
	}
	c.AddCommand(send, list, show, cancel)
	return c
}

func exitFor(s registry.CommandState) error {
	switch s {
	case registry.CommandSucceeded:
		return nil
	case registry.CommandFailed:
		return exitError(exitCommandFailed)
	case registry.CommandExpired:
		return exitError(exitCommandExpired)
	case registry.CommandCancelled:
		return exitError(exitCommandCancelled)
	}
	return fmt.Errorf("command ended in unknown state %q", s)
}

// readDoc reads a JSON argument, or stdin when it is "-".
func readDoc(cmd *cobra.Command, arg string) (json.RawMessage, error) {
	b := []byte(arg)
	if arg == "-" {
		var err error
		if b, err = io.ReadAll(cmd.InOrStdin()); err != nil {
			return nil, err
		}
	}
	b = bytes.TrimSpace(b)
	if !json.Valid(b) || !strings.HasPrefix(string(b), "{") {
		return nil, errors.New("the document must be a JSON object")
	}
	return b, nil
}
