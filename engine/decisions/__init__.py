"""The hot path's pure core: decide(catalog, profile, person, placements, context, now) and the person view the API shows. No I/O."""
