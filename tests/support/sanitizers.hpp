// Which sanitizer a test program is built with. GCC defines __SANITIZE_ADDRESS__ and
// __SANITIZE_THREAD__; clang 19 (the asan preset's compiler) has only the feature tests.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define PROCFLOW_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCFLOW_TEST_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define PROCFLOW_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PROCFLOW_TEST_TSAN 1
#endif
#endif
