package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/config"
	"github.com/fieldhub/fieldhub/hub"
	"github.com/fieldhub/fieldhub/ingest"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/store/influx"
	"github.com/fieldhub/fieldhub/store/tsdb"
	"log/slog"
)

// hubAPI talks to a running hub's HTTP API. The embedded TSDB has one
// writer, so while `fieldhub serve` runs, commands that read or write
// telemetry go through it; when no hub runs they open the store themselves.
type hubAPI struct {
	base  string
	token string
	http  *http.Client
}

// errNoHub means no hub is running on this data_dir.
var errNoHub = errors.New("no running hub")

// runningHub finds the hub serving cfg.DataDir, or returns errNoHub.
func runningHub(ctx context.Context, cfg *config.Config) (*hubAPI, error) {
	addrs, err := hub.ReadRunFile(cfg.DataDir)
	if err != nil {
		return nil, errNoHub
	}
	host := addrs.HTTP
	if h, p, err := splitHostPort(host); err == nil && (h == "" || h == "::" || h == "0.0.0.0") {
		host = "127.0.0.1:" + p
	}
	c := &hubAPI{base: "http://" + host, http: &http.Client{Timeout: 60 * time.Second}}
	req, _ := http.NewRequestWithContext(ctx, "GET", c.base+"/healthz", nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, errNoHub // a run file left by a killed hub
	}
	resp.Body.Close()
	tok := os.Getenv("FIELDHUB_TOKEN")
	if tok == "" {
		b, err := os.ReadFile(filepath.Join(cfg.DataDir, hub.AdminTokenFile))
		if err != nil {
			return nil, fmt.Errorf("the hub runs, but no API token: set FIELDHUB_TOKEN or make %s readable: %w", hub.AdminTokenFile, err)
		}
		tok = strings.TrimSpace(string(b))
	}
	c.token = tok
	return c, nil
}

func splitHostPort(s string) (string, string, error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", "", errors.New("no port")
	}
	return strings.Trim(s[:i], "[]"), s[i+1:], nil
}

// do sends a request and decodes a JSON answer into out.
func (c *hubAPI) do(ctx context.Context, method, path string, q url.Values, out any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("hub API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("hub API: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string }
		}
		if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("hub API %s %s: %s (%s)", method, path, e.Error.Message, e.Error.Code)
		}
		return fmt.Errorf("hub API %s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

// openLocalStore opens the configured store directly, for when no hub runs.
func openLocalStore(ctx context.Context, cfg *config.Config) (store.Store, func() int64, error) {
	log := slog.New(slog.DiscardHandler)
	switch cfg.Store.Backend {
	case "influx":
		i := cfg.Store.Influx
		s, err := influx.Open(ctx, influx.Options{URL: i.URL, Token: i.Token, Org: i.Org, Bucket: i.Bucket, WriteTimeout: i.WriteTimeout, Logger: log})
		return s, nil, err
	default:
		s, err := tsdb.Open(tsdb.Options{Dir: filepath.Join(cfg.DataDir, "tsdb"), Retention: cfg.Store.Retention, OutOfOrderWindow: cfg.Store.OutOfOrderWindow, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("open store (is a hub running on this data_dir without its HTTP API?): %w", err)
		}
		return s, s.MinValidTime, nil
	}
}

// withLocalPipeline runs fn with an ingest pipeline over the local store
// and registry, for replaying dead letters while no hub runs.
func (a *app) withLocalPipeline(cmd *cobra.Command, cfg *config.Config, fn func(p *ingest.Pipeline) error) error {
	ctx := cmd.Context()
	st, minValid, err := openLocalStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	return a.withRegistry(cmd, func(reg *registry.Registry) error {
		p, err := ingest.New(ingest.Options{Store: st, Registry: reg, Types: cfg.Types, MinValidTime: minValid,
			MaxAge: cfg.MaxReadingAge(), MaxFuture: cfg.Ingest.MaxFuture})
		if err != nil {
			return err
		}
		return fn(p)
	})
}
