"""LTSE bundle code: network (LLaVA + SAM + adaptive expert mixture), answers with [SEG]/[REJ], losses."""
