-- wrk script: every request carries the next token of a pre-minted pool
-- (file named by $BENCH_TOKENS, one token a line), so no token repeats.
--
-- All requests are formatted in init() (before wrk starts its clock), so the
-- per-request Lua work is one table lookup. When the pool runs out the thread
-- is stopped rather than wrapping around: a wrapped pool would turn misses
-- into cache hits and make a caching gateway look faster than it is. done()
-- prints "pool_used=N pool_size=M pool_exhausted=0|1" for run.sh to check.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

-- globals (not locals) so that done() can read them with thread:get()
pool_n = 0
pool_i = 0
pool_exhausted = 0
local reqs = {}

function init(args)
   local path = os.getenv("BENCH_TOKENS")
   if path == nil then
      error("BENCH_TOKENS is not set")
   end
   for line in io.lines(path) do
      if #line > 0 then
         pool_n = pool_n + 1
         reqs[pool_n] = wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. line })
      end
   end
   if pool_n == 0 then
      error("token pool " .. path .. " is empty")
   end
end

function request()
   pool_i = pool_i + 1
   if pool_i > pool_n then
      if pool_exhausted == 0 then
         pool_exhausted = 1
         wrk.thread:stop()
      end
      -- a few connections may still ask before the loop stops; hand them the
      -- last token (a handful of repeats at most, reported as exhausted)
      return reqs[pool_n]
   end
   return reqs[pool_i]
end

function done(summary, latency, requests)
   local used, size, exhausted = 0, 0, 0
   for _, t in ipairs(threads) do
      used = used + math.min(t:get("pool_i"), t:get("pool_n"))
      size = size + t:get("pool_n")
      exhausted = math.max(exhausted, t:get("pool_exhausted"))
   end
   io.write(string.format("pool_used=%d pool_size=%d pool_exhausted=%d\n", used, size, exhausted))
end
