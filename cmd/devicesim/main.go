// Command devicesim simulates fleets of fieldhub devices and generates load:
// `devicesim provision` creates a profile's devices in the hub,
// `devicesim run` runs a profile and checks expectations,
// `devicesim load` measures a broker's publish→PUBACK throughput and latency.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/devicesim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee exitError
		if !errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, "devicesim:", err)
			os.Exit(2)
		}
		os.Exit(int(ee))
	}
}

// exitError ends the program with a code and no further message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

type app struct {
	stdout, stderr io.Writer
	logLevel       string
}

func (a *app) logger() (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(a.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: lv})), nil
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "devicesim",
		Short: "Simulated fieldhub devices and an MQTT load generator",
		Long: `devicesim runs fleets of simulated devices described by a YAML profile
(see configs/devicesim/): each device connects with its own id and token,
publishes deterministic signals, buffers while offline, reconnects with
backoff and jitter, answers commands and reports its twin, and injects the
faults the profile asks for, counting each one.

Exit status: 0 success, 1 an expectation failed, 2 the run could not be
carried out.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(newProvisionCmd(a), newRunCmd(a), newLoadCmd(a))
	return root
}

// hubFlags locate the fieldhub CLI and its data directory.
type hubFlags struct {
	fieldhub string
	dataDir  string
	args     []string
}

func (h *hubFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&h.fieldhub, "fieldhub", "fieldhub", "path of the fieldhub binary")
	cmd.Flags().StringVar(&h.dataDir, "data-dir", "", "the hub's data_dir")
	cmd.Flags().StringArrayVar(&h.args, "fieldhub-arg", nil, "extra flag for fieldhub commands (repeatable), e.g. --fieldhub-arg=--config=hub.yaml")
}

func (h *hubFlags) cli() (*devicesim.FieldhubCLI, error) {
	path, err := exec.LookPath(h.fieldhub)
	if err != nil {
		return nil, fmt.Errorf("--fieldhub: %w", err)
	}
	if h.dataDir == "" {
		return nil, errors.New("--data-dir is required to reach the hub")
	}
	return &devicesim.FieldhubCLI{Path: path, DataDir: h.dataDir, Args: h.args}, nil
}

func provision(ctx context.Context, p *devicesim.Profile, hf *hubFlags, credPath string, log *slog.Logger) ([]devicesim.Credential, error) {
	cli, err := hf.cli()
	if err != nil {
		return nil, err
	}
	existing, err := devicesim.ReadCredentials(credPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	creds, perr := devicesim.Provision(ctx, p, cli, existing)
	if len(creds) > len(existing) || perr == nil {
		if err := devicesim.WriteCredentials(credPath, creds); err != nil {
			return nil, err
		}
	}
	if perr != nil {
		return nil, perr
	}
	log.Info("provisioned", "new", len(creds)-len(existing), "total", len(creds), "credentials", credPath)
	return creds, nil
}

func newProvisionCmd(a *app) *cobra.Command {
	var profile, creds string
	var hf hubFlags
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Create a profile's devices in the hub and write their credentials",
		Long: `Run "fieldhub device add ID --type T" for every device of the profile that
the credentials file does not list yet, and write the file (CSV id,token,
mode 0600). Running it again adds only what is missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			p, err := devicesim.LoadProfile(profile)
			if err != nil {
				return err
			}
			_, err = provision(cmd.Context(), p, &hf, creds, log)
			return err
		},
	}
	cmd.Flags().StringVar(&profile, "profile", "", "profile YAML (required)")
	cmd.Flags().StringVar(&creds, "credentials", "devicesim-credentials.csv", "credentials file to write")
	hf.add(cmd)
	cmd.MarkFlagRequired("profile")
	return cmd
}

// faultFlags override the profile's faults for every device type.
type faultFlags struct {
	f          devicesim.Faults
	skewPct    float64
	stormEvery time.Duration
	stormPct   float64
}

func (ff *faultFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.Float64Var(&ff.f.MalformedPct, "malformed-pct", 0, "fault: percent of telemetry messages sent as malformed JSON")
	fl.Float64Var(&ff.f.OutOfRangePct, "out-of-range-pct", 0, "fault: percent of readings with an out-of-range value")
	fl.DurationVar(&ff.f.ClockSkew, "clock-skew", 0, "fault: add this to reading timestamps (negative for the past)")
	fl.Float64Var(&ff.skewPct, "clock-skew-pct", 100, "fault: percent of readings skewed")
	fl.Float64Var(&ff.f.DuplicatePct, "duplicate-pct", 0, "fault: percent of readings delivered twice")
	fl.DurationVar(&ff.f.SlowConsumer, "slow-consumer", 0, "fault: delay the handling (and PUBACK) of every received message")
	fl.DurationVar(&ff.stormEvery, "storm-every", 0, "fault: disconnect storm period")
	fl.Float64Var(&ff.stormPct, "storm-pct", 0, "fault: percent of devices dropped by each storm")
}

// apply returns the overrides for the flags that were set.
func (ff *faultFlags) apply(cmd *cobra.Command, p *devicesim.Profile) (*devicesim.Faults, *devicesim.Storm) {
	fl := cmd.Flags()
	var faults *devicesim.Faults
	for _, name := range []string{"malformed-pct", "out-of-range-pct", "clock-skew", "clock-skew-pct", "duplicate-pct", "slow-consumer"} {
		if !fl.Changed(name) {
			continue
		}
		if faults == nil {
			f := p.Faults
			faults = &f
		}
		switch name {
		case "malformed-pct":
			faults.MalformedPct = ff.f.MalformedPct
		case "out-of-range-pct":
			faults.OutOfRangePct = ff.f.OutOfRangePct
		case "clock-skew":
			faults.ClockSkew = ff.f.ClockSkew
		case "clock-skew-pct":
			faults.ClockSkewPct = &ff.skewPct
		case "duplicate-pct":
			faults.DuplicatePct = ff.f.DuplicatePct
		case "slow-consumer":
			faults.SlowConsumer = ff.f.SlowConsumer
		}
	}
	var storm *devicesim.Storm
	if fl.Changed("storm-every") || fl.Changed("storm-pct") {
		s := p.Storm
		if fl.Changed("storm-every") {
			s.Every = ff.stormEvery
		}
		if fl.Changed("storm-pct") {
			s.Pct = ff.stormPct
		}
		storm = &s
	}
	return faults, storm
}

// brokerFromRunFile reads the MQTT address of a hub running on dataDir
// from its run file (data_dir/hub.json), so `devicesim run --data-dir`
// finds `fieldhub serve` without --broker.
func brokerFromRunFile(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "hub.json"))
	if err != nil {
		return "", err
	}
	var rf struct {
		MQTT string `json:"mqtt"`
	}
	if err := json.Unmarshal(b, &rf); err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Join(dataDir, "hub.json"), err)
	}
	host, port, err := net.SplitHostPort(rf.MQTT)
	if err != nil {
		return "", fmt.Errorf("hub.json mqtt %q: %w", rf.MQTT, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "tcp://" + net.JoinHostPort(host, port), nil
}

func newRunCmd(a *app) *cobra.Command {
	var (
		profile, creds, broker string
		anonymous, doProvision bool
		asJSON                 bool
		duration, settle       time.Duration
		expect                 []string
		hf                     hubFlags
		ff                     faultFlags
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a profile's fleet, then check expectations against the hub",
		Long: `Run the fleet of a profile for --duration, then stop taking readings and
check the expectations (--expect, or the profile's expect list) until they
hold or --settle passes. Keys: stored (readings the hub stored, read back
with "fieldhub telemetry query"), rejected (the hub's dead letters), errors
(rejections reported on devices/{id}/errors), replies (command replies
sent), delivered (telemetry messages acknowledged). Values: a count or
"all" (what the simulator sent that the hub should have accepted, or
rejected). Operators: =, >=, <=.

Exits 1 when an expectation fails.`,
		Example: `  devicesim run --profile configs/devicesim/thermostats.yaml --data-dir ./data \
      --fieldhub ./bin/fieldhub --provision --duration 30s --expect stored=all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			p, err := devicesim.LoadProfile(profile)
			if err != nil {
				return err
			}
			var exps []devicesim.Expectation
			if cmd.Flags().Changed("expect") {
				if exps, err = devicesim.ParseExpectations(expect); err != nil {
					return err
				}
			}
			var credMap map[string]string
			switch {
			case anonymous:
			case doProvision:
				cs, err := provision(ctx, p, &hf, creds, log)
				if err != nil {
					return err
				}
				credMap = devicesim.CredentialMap(cs)
			default:
				cs, err := devicesim.ReadCredentials(creds)
				if err != nil {
					return fmt.Errorf("%w (run with --provision, or devicesim provision, to create it)", err)
				}
				credMap = devicesim.CredentialMap(cs)
			}
			if broker == "" && p.Broker == "" {
				if hf.dataDir != "" {
					if broker, err = brokerFromRunFile(hf.dataDir); err != nil {
						return fmt.Errorf("no --broker and no running hub on --data-dir: %w", err)
					}
				} else {
					broker = "tcp://127.0.0.1:1883"
				}
			}
			var hub devicesim.Hub
			if hf.dataDir != "" {
				if hub, err = hf.cli(); err != nil {
					return err
				}
			}
			faults, storm := ff.apply(cmd, p)
			res, err := devicesim.Run(ctx, devicesim.RunConfig{
				Fleet: devicesim.FleetConfig{
					Profile: p, Broker: broker, Credentials: credMap, Anonymous: anonymous,
					Faults: faults, Storm: storm, Logger: log,
				},
				Duration: duration,
				Expect:   exps,
				Hub:      hub,
				Settle:   settle,
				Progress: func(el time.Duration, s devicesim.Stats) {
					fmt.Fprintf(a.stderr, "%6.0fs readings=%d delivered=%d failed=%d buffered=%d connects=%d lost=%d replies=%d hub_errors=%d\n",
						el.Seconds(), s.Readings, s.Delivered, s.PublishErrors, s.Buffered, s.Connects, s.ConnectionsLost, s.Replies, s.HubErrors)
				},
			})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(map[string]any{
					"start": res.Start, "end": res.End, "passed": res.Passed,
					"stats": res.Stats.Map(), "expectations": res.Outcomes,
				}); err != nil {
					return err
				}
			} else {
				fmt.Fprint(a.stdout, res.Summary())
			}
			if !res.Passed {
				return exitError(1)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&profile, "profile", "", "profile YAML (required)")
	fl.StringVar(&creds, "credentials", "devicesim-credentials.csv", "credentials file (CSV id,token or JSON lines)")
	fl.BoolVar(&anonymous, "anonymous", false, "connect without credentials (plain brokers)")
	fl.BoolVar(&doProvision, "provision", false, "create missing devices in the hub first (needs --fieldhub, --data-dir)")
	fl.StringVar(&broker, "broker", "", "MQTT broker URL (default: the profile's, the hub's on --data-dir, or tcp://127.0.0.1:1883)")
	fl.DurationVar(&duration, "duration", time.Minute, "how long devices take readings")
	fl.DurationVar(&settle, "settle", 15*time.Second, "how long to wait for expectations to hold after --duration")
	fl.StringArrayVar(&expect, "expect", nil, "expectation KEY=N|all, KEY>=N, KEY<=N (repeatable)")
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON")
	hf.add(cmd)
	ff.add(cmd)
	cmd.MarkFlagRequired("profile")
	return cmd
}

func newLoadCmd(a *app) *cobra.Command {
	var (
		cfg      devicesim.LoadConfig
		qos      int
		creds    string
		asJSON   bool
		progress bool
	)
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Generate MQTT telemetry load and report throughput and PUBACK latency",
		Long: `Connect --devices clients and publish telemetry for --duration: open loop at
--rate messages per second per device, or --closed-loop (each device sends
its next message when the previous one is acknowledged). A progress line is
printed on stderr every second; the final report gives messages/s,
publish→PUBACK latency percentiles (p50, p99, p99.9), errors by kind and
the simulator's own CPU use. sent = acked + errors + in flight.`,
		Example: `  devicesim load --broker tcp://127.0.0.1:1883 --anonymous --devices 5000 --rate 2 --qos 1 --duration 30s`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := a.logger()
			if err != nil {
				return err
			}
			if qos < 0 || qos > 1 {
				return fmt.Errorf("--qos %d: want 0 or 1", qos)
			}
			cfg.QoS = byte(qos)
			cfg.Logger = log
			if !cfg.Anonymous {
				if creds == "" {
					return errors.New("pass --credentials FILE or --anonymous")
				}
				if cfg.Credentials, err = devicesim.ReadCredentials(creds); err != nil {
					return err
				}
			}
			if progress {
				cfg.Progress = func(p devicesim.LoadProgress) { fmt.Fprintln(a.stderr, p) }
			}
			rep, err := devicesim.RunLoad(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			fmt.Fprint(a.stdout, rep.Text())
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.Broker, "broker", "tcp://127.0.0.1:1883", "MQTT broker URL")
	fl.IntVar(&cfg.Devices, "devices", 100, "simulated devices (one MQTT connection each)")
	fl.Float64Var(&cfg.Rate, "rate", 1, "messages per second per device (open loop)")
	fl.BoolVar(&cfg.ClosedLoop, "closed-loop", false, "publish the next message as soon as the previous PUBACK arrives")
	fl.IntVar(&qos, "qos", 1, "QoS 0 or 1")
	fl.IntVar(&cfg.Metrics, "metrics", 1, "metrics per message (10 makes the ~180-byte reading of the hub benchmark)")
	fl.DurationVar(&cfg.Duration, "duration", 10*time.Second, "publishing time")
	fl.StringVar(&creds, "credentials", "", "credentials file (CSV id,token or JSON lines)")
	fl.BoolVar(&cfg.Anonymous, "anonymous", false, "connect without credentials, ids --id-prefix + n")
	fl.StringVar(&cfg.IDPrefix, "id-prefix", "load-", "device id prefix with --anonymous")
	fl.IntVar(&cfg.MaxInflight, "max-inflight", 100, "open loop: most unacknowledged messages per device")
	fl.IntVar(&cfg.ConnectConcurrency, "connect-concurrency", 100, "simultaneous CONNECTs")
	fl.DurationVar(&cfg.Drain, "drain", 5*time.Second, "wait this long for the last acknowledgements")
	fl.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fl.BoolVar(&progress, "progress", true, "print a progress line every second on stderr")
	return cmd
}
