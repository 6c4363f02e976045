// The control: every snippet with its bad line switched off must compile, so each compile-fail
// test fails for the reason it names and not for a typo in the snippet.
#include "committing_sink_factory.cpp"
#include "filter_not_bool.cpp"
#include "mismatched_stage.cpp"
#include "misplaced_pre_aggregate.cpp"
#include "pointer_field_record.cpp"
#include "pointer_struct_item.cpp"
#include "unfixed_enum.cpp"
#include "view_item.cpp"
