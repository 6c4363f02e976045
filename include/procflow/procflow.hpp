// procflow: multi-process dataflow pipelines over shared-memory rings. The one header to include.
#pragma once

#include <procflow/cancel.hpp>
#include <procflow/codec.hpp>
#include <procflow/counter.hpp>
#include <procflow/error.hpp>
#include <procflow/fn.hpp>
#include <procflow/hash.hpp>
#include <procflow/keyed.hpp>
#include <procflow/options.hpp>
#include <procflow/policy.hpp>
#include <procflow/pool.hpp>
#include <procflow/pipeline.hpp>
#include <procflow/profile.hpp>
#include <procflow/replica.hpp>
#include <procflow/report.hpp>
#include <procflow/running.hpp>
#include <procflow/scaling.hpp>
#include <procflow/sources.hpp>
#include <procflow/verdict.hpp>
