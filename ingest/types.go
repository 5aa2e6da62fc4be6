package ingest

import (
	"context"
	"sync"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// typeCache maps devices to their device type without a registry query per
// message. Entries live for a minute, so a device re-created with another
// type is validated against it soon after.
type typeCache struct {
	reg     Registry
	types   map[string]*telemetry.DeviceType
	def     *telemetry.DeviceType
	mu      sync.RWMutex
	entries map[string]typeEntry
}

type typeEntry struct {
	dt      *telemetry.DeviceType
	expires time.Time
}

const typeTTL = time.Minute

func newTypeCache(reg Registry, types map[string]*telemetry.DeviceType) *typeCache {
	return &typeCache{reg: reg, types: types, def: telemetry.DefaultType(), entries: map[string]typeEntry{}}
}

func (c *typeCache) get(ctx context.Context, device string) *telemetry.DeviceType {
	now := time.Now()
	c.mu.RLock()
	e, ok := c.entries[device]
	c.mu.RUnlock()
	if ok && now.Before(e.expires) {
		return e.dt
	}
	dt := c.def
	if d, err := c.reg.Device(ctx, device); err == nil {
		if t, ok := c.types[d.Type]; ok {
			dt = t
		}
	}
	c.mu.Lock()
	if len(c.entries) > 100000 {
		clear(c.entries) // bound memory; entries are cheap to reload
	}
	c.entries[device] = typeEntry{dt: dt, expires: now.Add(typeTTL)}
	c.mu.Unlock()
	return dt
}
