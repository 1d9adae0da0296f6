-- wrk script: each request asks for one of N keys drawn from a Zipf distribution
-- (P(rank k) ~ 1 / k^s), the shape of real image traffic: a few hot images, a long tail.
-- Env: ZIPF_KEYS (default 100000), ZIPF_S (default 1.1), ZIPF_SEED.
-- ZIPF_SEQUENTIAL=1 asks for every key in turn instead (1, 2, … N, 1, …): a warm-up that
-- puts the whole key space in the cache, so that the measured rounds see the steady
-- state (every key cached) rather than the first misses of the long tail.
local n = tonumber(os.getenv("ZIPF_KEYS") or "100000")
local s = tonumber(os.getenv("ZIPF_S") or "1.1")
local cdf = {}

function init(args)
  math.randomseed(tonumber(os.getenv("ZIPF_SEED") or "42") + (args[1] and #args[1] or 0))
  local total = 0
  for k = 1, n do
    total = total + 1 / k ^ s
    cdf[k] = total
  end
  for k = 1, n do
    cdf[k] = cdf[k] / total
  end
end

local function draw()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

local sequential = os.getenv("ZIPF_SEQUENTIAL") == "1"
local next_key = 0

function request()
  local key
  if sequential then
    next_key = next_key % n + 1
    key = next_key
  else
    key = draw()
  end
  return wrk.format("GET", "/api/v1/images/zipf/" .. key .. ".jpg/proxy")
end
