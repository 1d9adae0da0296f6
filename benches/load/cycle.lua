-- wrk script: each request asks for the next of N keys in turn (1, 2, … N, 1, …), so no
-- key comes back soon: the lookups go to the memory cache's shards, not to the
-- per-thread copies that serve keys a worker meets again and again.
-- Env: CYCLE_KEYS (default 1000).
local n = tonumber(os.getenv("CYCLE_KEYS") or "1000")
local next_key = 0

function request()
  next_key = next_key % n + 1
  return wrk.format("GET", "/api/v1/images/cycle/" .. next_key .. ".jpg/proxy")
end
