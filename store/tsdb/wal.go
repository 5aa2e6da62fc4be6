package tsdb

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/prometheus/prometheus/tsdb/wlog"
)

// walSyncer fsyncs the segments of one write log directory (wal or wbl)
// that a commit may have written to. The TSDB gives no access to its
// wlog.WL, so the segment files are opened here; on Linux fsync flushes a
// file's dirty pages whichever descriptor it is called on.
type walSyncer struct {
	dir  string
	last int      // index of the segment f is open on; -1 before the first sync
	f    *os.File // the newest segment
}

func newWALSyncer(dbDir, name string) *walSyncer {
	return &walSyncer{dir: filepath.Join(dbDir, name), last: -1}
}

func (w *walSyncer) sync() error {
	_, last, err := wlog.Segments(w.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the wbl is created with the first out-of-order sample
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", w.dir, err)
	}
	if last < 0 {
		return nil
	}
	if w.f == nil || last != w.last {
		// The log moved on to new segments. The wlog fsyncs a full segment
		// when it rotates, but asynchronously: sync the ones this commit may
		// have written to, then the directory for the new entries.
		if w.f != nil {
			for i := w.last + 1; i < last; i++ {
				if err := syncFile(wlog.SegmentName(w.dir, i)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("sync %s: %w", w.dir, err)
				}
			}
			err := w.f.Sync()
			w.f.Close()
			w.f = nil
			if err != nil {
				return fmt.Errorf("sync %s: %w", w.dir, err)
			}
		}
		f, err := os.Open(wlog.SegmentName(w.dir, last))
		if err != nil {
			return fmt.Errorf("sync %s: %w", w.dir, err)
		}
		w.f, w.last = f, last
		if err := syncFile(w.dir); err != nil {
			return fmt.Errorf("sync %s: %w", w.dir, err)
		}
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", w.dir, err)
	}
	return nil
}

func (w *walSyncer) close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

func syncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
